"""``oat-edge`` command line. Each stage contributes its subcommands through a ``register``
function in its ``cli`` module; importing those modules must stay cheap (no torch at import
time) so that ``oat-edge --help`` works on a robot with only the runtime installed."""

from __future__ import annotations

import argparse
import importlib
import sys

from oat_edge import __version__
from oat_edge.errors import OatEdgeError

STAGE_CLIS = ("oat_edge.training.cli", "oat_edge.export.cli", "oat_edge.runtime.cli", "oat_edge.bench.cli")


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
    import warnings

    def one_line(message, category, filename, lineno, file=None, line=None):  # no source line echoed
        print(f"oat-edge {args.command}: warning: {message}", file=sys.stderr)

    previous = warnings.showwarning
    warnings.showwarning = one_line
    try:
        return int(args.func(args) or 0)
    except OatEdgeError as e:
        print(f"oat-edge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"oat-edge {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder the command was pointed at (unwritable, missing, ...)
        where = f": {e.filename}" if e.filename else ""
        print(f"oat-edge {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"oat-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())


def cli_reference() -> str:
    """Markdown tables of every subcommand's options (docs/cli.md is this text; a test keeps it
    current). Hidden, deprecated spellings are listed apart."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, p in sub.choices.items():
        out += [f"### `oat-edge {name}`", "", p.description or "", "",
                "| option | value | default | meaning |", "|---|---|---|---|"]
        hidden = []
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if a.help == argparse.SUPPRESS:
                hidden += a.option_strings
                continue
            flags = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.metavar or a.dest}` (positional)"
            if a.nargs == 0:
                value = ""
            else:
                value = str(a.metavar or (("{" + ",".join(map(str, a.choices)) + "}") if a.choices else a.dest.upper()))
                if a.nargs in ("+", "*"):
                    value += " …"
                elif a.nargs == "?":
                    value = f"[{value}]"
            default = "" if a.default in (None, False, argparse.SUPPRESS) or a.nargs == 0 else f"`{a.default}`"
            if isinstance(a.default, (list, tuple)):
                default = "`" + " ".join(map(str, a.default)) + "`" if a.default else ""
            text = (a.help or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| {flags} | {value} | {default} | {text} |")
        if hidden:
            out += ["", "Deprecated spellings (still accepted, with a note on stderr): "
                    + ", ".join(f"`{h}`" for h in hidden) + "."]
        out.append("")
    return "\n".join(out)
