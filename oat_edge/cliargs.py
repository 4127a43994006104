"""The command line's shared vocabulary: every option that more than one subcommand takes is
defined here once, with one spelling and one meaning, and added by the stage CLIs.

    --backend NAME         a runtime backend (choices from the backend registry), or auto
    --device DEV           where to run: auto (the command's own choice), cpu, cuda or cuda:N
    --threads N            CPU threads, ≥ 1 (default: the CPUs this process may use)
    --jobs N               worker processes, ≥ 1
    --data-dir DIR         a dataset's official files
    --providers EP ...     onnxruntime execution providers (cuda, tensorrt, cpu)
    --batch N [N ...]      batch sizes to run
    --batch-profile MIN:OPT:MAX   the batch range a bundle / engine is built for
    --json FILE            write the results as JSON (``-``: standard output)
    --out PATH             where the command writes what it makes;  --force  replace it
    --precision P          numeric precision(s) of what is built
    --no-progress          no progress bars
    --lam λ --width W      one mode;  --modes λ:W ...  several
    --<what>-lambdas λ ...  lists of λ (--grid-lambdas, --bake-lambdas, --calib-lambdas)
    --widths W ...         widths

Old spellings stay accepted as hidden aliases that print a deprecation note (``alias``).
Importing this module is cheap (argparse only).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

SUPPRESS = argparse.SUPPRESS


def _deprecated(old: str, new: str, base=argparse._StoreAction):
    class Deprecated(base):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{parser.prog}: {old} is deprecated, use {new}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return Deprecated


def alias(p, old: str, new: str, dest: str, **kw) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of ``new`` (same ``dest``)."""
    base = {"store_true": argparse._StoreTrueAction}.get(kw.pop("action", None), argparse._StoreAction)
    p.add_argument(old, dest=dest, help=SUPPRESS, action=_deprecated(old, new, base), **kw)


def bundle_command(subparsers, name: str, help: str, description: str, **kw):
    """A subcommand whose first argument is a bundle folder (BUNDLE)."""
    p = subparsers.add_parser(name, help=help, description=description, **kw)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder written by `oat-edge export`")
    return p


def add_backend(p, choices: Sequence[str], default: str = "auto", what: str = "") -> None:
    """``--backend NAME``; the name is checked by the command (one clear error naming the
    registered backends), not by argparse."""
    p.add_argument("--backend", default=default, metavar="NAME",
                   help=f"runtime backend: {', '.join(choices)} (default {default}){what}")


DEVICE_VALUES = "auto, cpu, cuda or cuda:N"


def check_device(value: Optional[str]) -> str:
    """``value`` ("auto" for None) when it is one of DEVICE_VALUES; ConfigError otherwise."""
    import re

    value = "auto" if value is None else str(value)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        from oat_edge.errors import ConfigError

        raise ConfigError(f"device must be {DEVICE_VALUES}, got {value!r}")
    return value


def device_arg(text: str) -> Optional[str]:
    """argparse type of ``--device``: ``auto`` is the command's own choice (None); any other
    value is passed on and checked by the command (one clear error naming DEVICE_VALUES)."""
    return None if text == "auto" else text


def add_device(p, auto: str = "the backend's own device", default: Optional[str] = None, what: str = "") -> None:
    """``--device DEV``: where to run. ``auto`` says what the command picks by itself."""
    d = f"default {default}" if default else "default auto"
    p.add_argument("--device", type=device_arg, default=default, metavar="DEV",
                   help=f"{DEVICE_VALUES}; auto: {auto} ({d}){what}")


def add_runtime(p, choices: Sequence[str], default: str = "auto", backend_what: str = "",
                device_what: str = "") -> None:
    """Where a bundle runs, the same in every runtime command: ``--backend``, ``--device``,
    ``--threads``."""
    add_backend(p, choices, default=default, what=backend_what)
    add_device(p, what=device_what)
    add_threads(p)


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (counts, batch sizes, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def add_threads(p, what: str = "CPU threads for inference") -> None:
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help=f"{what}, ≥ 1 (default: the CPUs this process may use)")


def add_jobs(p, default: Optional[int] = None, what: str = "") -> None:
    """``--jobs N``: worker processes."""
    p.add_argument("--jobs", type=positive_int, default=default, metavar="N",
                   help=f"worker processes, ≥ 1{'; ' + what if what else ''}")


def add_data_dir(p, what: str = "") -> None:
    """``--data-dir DIR``: the folder holding a dataset's official files (DIR/<file> or
    DIR/<dataset>/<file>); digits needs none."""
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"folder with the dataset's official files (not needed for digits){' ' + what if what else ''}")


def provider_spec(text: str):
    """argparse type: ``NAME`` or ``NAME:key=value[,key=value]`` -> NAME or (NAME, {options})."""
    name, _, rest = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:key=value,..., got {text!r}")
    if not rest:
        return name
    options = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"provider options are key=value pairs, got {part!r} in {text!r}")
        options[key.strip()] = value.strip()
    return (name, options)


def add_providers(p) -> None:
    """``--providers EP [EP ...]``: onnxruntime execution providers in order of preference."""
    p.add_argument("--providers", nargs="+", type=provider_spec, default=None, metavar="EP",
                   help="onnxruntime execution providers in order, e.g. 'tensorrt cuda' (backend onnxruntime; "
                   "cpu is always the fallback). Options: NAME:key=value,... e.g. "
                   "tensorrt:trt_fp16_enable=False. Needs onnxruntime-gpu (docs/deploy.md)")


def add_out(p, metavar: str, what: str, required: bool = False, default: Optional[str] = None,
            short: bool = False) -> None:
    """``--out PATH`` (``-o`` too with ``short``): where the command writes what it makes."""
    flags = ("-o", "--out") if short else ("--out",)
    p.add_argument(*flags, required=required, default=default, metavar=metavar, help=what)


def add_force(p, what: str) -> None:
    """``--force``: replace (or rebuild) output that already exists."""
    p.add_argument("--force", action="store_true", help=what)


def add_precision(p, choices: Sequence[str], default, many: bool, what: str) -> None:
    """``--precision P`` (or several): the numeric precision(s) of what is built."""
    p.add_argument("--precision", nargs="+" if many else None, choices=choices, default=default, metavar="P",
                   help=what)


def add_key(p, what: str) -> None:
    """``--key PUB`` (repeatable): trusted Ed25519 public keys (``oat-edge keygen``)."""
    p.add_argument("--key", action="append", default=None, metavar="PUB",
                   help=f"trusted public key, repeatable: {what}")


def check_json_target(target: Optional[str], what: str = "--json file", bundle: Optional[str] = None) -> None:
    """ConfigError now, before any work, when a ``--json`` file cannot be written, or would be
    written inside ``bundle`` (the input bundle: a report must not overwrite its files)."""
    if target and target != "-":
        from oat_edge.fileio import check_output_file

        if bundle is not None:
            from pathlib import Path

            from oat_edge.errors import ConfigError

            folder, out = Path(bundle).resolve(), Path(target).resolve()
            if folder == out or folder in out.parents:
                raise ConfigError(f"{what} {target} lies inside the bundle {bundle}; write it elsewhere")
        check_output_file(target, what)


def add_batch(p, many: bool, default=None, what: str = "") -> None:
    """``--batch N`` (one size) or ``--batch N [N ...]`` (several)."""
    p.add_argument("--batch", type=positive_int, nargs="+" if many else None, default=default, metavar="N",
                   help=f"batch size{'s' if many else ''} to run{what}")


def add_batch_profile(p, default: Optional[str], what: str = "") -> None:
    """``--batch-profile MIN:OPT:MAX`` (old spelling ``--batch`` kept as a hidden alias)."""
    d = f" (default {default})" if default else ""
    p.add_argument("--batch-profile", default=default, metavar="MIN:OPT:MAX", dest="batch_profile",
                   help=f"batch range{what}{d}")
    alias(p, "--batch", "--batch-profile", "batch_profile", metavar="MIN:OPT:MAX")


def add_json(p, what: str = "the results") -> None:
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help=f"write {what} as JSON to FILE (or standard output with no FILE / '-')")


def add_progress(p, old: Optional[str] = None, what: str = "") -> None:
    p.add_argument("--no-progress", action="store_true", dest="no_progress",
                   help=f"no progress bars{' (' + what + ')' if what else ''}")
    if old:
        alias(p, old, "--no-progress", "no_progress", action="store_true")


def add_mode(p) -> None:
    p.add_argument("--lam", type=float, default=None, metavar="λ", help="robustness level λ in [0, 1]")
    p.add_argument("--width", type=float, default=None, metavar="W", help="width (one of the bundle's widths)")


def add_modes(p, what: str = "") -> None:
    p.add_argument("--modes", nargs="+", default=None, metavar="λ:W", help=f"modes, e.g. 0:0.5 1:1.0{what}")


def add_lambdas(p, name: str, what: str, old: Optional[str] = None, **kw) -> None:
    """``--{name}-lambdas λ ...`` (``old``: a former spelling kept as a hidden alias)."""
    flag, dest = f"--{name}-lambdas", f"{name.replace('-', '_')}_lambdas"
    p.add_argument(flag, type=float, nargs="+", metavar="λ", dest=dest, help=what, **kw)
    if old:
        alias(p, old, flag, dest, type=float, nargs="+", metavar="λ")


def add_widths(p, what: str) -> None:
    p.add_argument("--widths", type=float, nargs="+", metavar="W", help=what)


def add_lambda_set(p, what: str) -> None:
    """``--lambdas λ ...``: the λ values a command trains or evaluates."""
    p.add_argument("--lambdas", type=float, nargs="+", metavar="λ", help=what)


def add_batch_size(p, what: str, default: Optional[int] = None) -> None:
    """``--batch-size N``: images per training or evaluation step (``--batch`` is the runtime's)."""
    p.add_argument("--batch-size", type=int, default=default, metavar="N", help=what)


def add_seed(p, what: str, default: Optional[int] = 0) -> None:
    p.add_argument("--seed", type=int, default=default, metavar="N", help=what)


STEP_SIZE_NAMES = ("reference", "paper")


def step_size_arg(text: str):
    """argparse type of ``--step-size``: a number, or 'reference' / 'paper' (the dataset's)."""
    if text in STEP_SIZE_NAMES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'reference' or 'paper', got {text!r}") from None


def add_attack_radius(p, step_default: str, eps_default: str = "the dataset's", step_names: bool = True) -> None:
    """``--eps`` (the L∞ radius in [0, 1] image units) and ``--step-size`` (the PGD step)."""
    p.add_argument("--eps", type=float, default=None,
                   help=f"attack L∞ radius in [0, 1] image units (default: {eps_default})")
    values = "a number, 'reference' or 'paper' (2/255)" if step_names else "a number"
    p.add_argument("--step-size", type=step_size_arg if step_names else float, default=None,
                   metavar="STEP|reference|paper" if step_names else "STEP",
                   help=f"attack step size: {values} (default: {step_default})")


def json_out(target: Optional[str], obj) -> None:
    """Write ``obj`` as JSON to ``target`` ('-': standard output)."""
    import json

    if target == "-":
        print(json.dumps(obj, indent=2))
        return
    from oat_edge.fileio import atomic_write_json

    atomic_write_json(target, obj)
