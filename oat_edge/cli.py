"""``oat-edge`` command line. Each stage contributes its subcommands through a ``register``
function in its ``cli`` module; importing those modules must stay cheap (no torch at import
time) so that ``oat-edge --help`` works on a robot with only the runtime installed."""

from __future__ import annotations

import argparse
import importlib
import sys

from oat_edge import __version__
from oat_edge.errors import OatEdgeError

STAGE_CLIS = ("oat_edge.training.cli", "oat_edge.export.cli", "oat_edge.runtime.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oat-edge",
        description="Train, export and run Once-for-All Adversarial Training (OAT/OATS) models: "
        "one network, a robustness knob λ ∈ [0, 1] and a width knob, switched at run time.",
    )
    parser.add_argument("--version", action="version", version=f"oat-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STAGE_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # stage not installed in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OatEdgeError as e:
        print(f"oat-edge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"oat-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
