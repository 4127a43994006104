"""``oat-edge train``, ``oat-edge eval`` and ``oat-edge reproduce`` (the harness in the
checkout's reproduce/ folder, imported when the command line is built).

Nothing heavy is imported here: torch and the trainers load inside ``run_train``, so
``oat-edge --help`` stays fast. Distributed training is the same command under torchrun:

    torchrun --nproc-per-node 2 -m oat_edge.cli train --dataset digits --method oats --out ckpt.pt
"""

from __future__ import annotations

import argparse
import json
import os

from oat_edge import cliargs
from oat_edge.errors import ConfigError, DependencyError

METHOD_HELP = (
    "oats: OAT + slimming (λ per sample, every width each step; default) · oat: OAT at full width · "
    "pgd-at: PGD adversarial training at a fixed λ (no FiLM, one BN) · pgd-ats: PGD-AT slimmable"
)

TRAIN_EPILOG = """examples:
  oat-edge train --dataset digits --method oats --widths 0.5 0.75 1.0 --out ckpt.pt
  oat-edge train --dataset cifar10 --data-dir ~/data --method oat --out oat.pt
  oat-edge train --dataset folder:~/robot_images --image-size 32 --out mine.pt
  oat-edge train --resume ckpt.pt                       # continue an interrupted run
  torchrun --nproc-per-node 2 -m oat_edge.cli train --dataset digits --out ckpt.pt
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train an OAT/OATS model (or a PGD-AT/PGD-ATS baseline) into a checkpoint",
        description="Train once, get a model whose robustness (λ) and width can be switched at run time. "
        "Checkpoints are written atomically after every epoch and can be resumed exactly.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(p.add_argument_group("what to train"))
    _add_optimisation_options(p.add_argument_group("optimisation (defaults per dataset)"))
    _add_run_options(p.add_argument_group("data, device, output"))
    p.set_defaults(func=run_train)
    _register_eval(subparsers)
    _register_reproduce(subparsers)


def _add_model_options(g) -> None:
    g.add_argument("--dataset", help="digits (default; ships with scikit-learn), cifar10, svhn, stl10, "
                   "folder:PATH (one sub-folder of PNG/JPEG images per class) or npz:PATH (arrays x, y); "
                   "see docs/deploy.md")
    g.add_argument("--method", help=METHOD_HELP)
    g.add_argument("--arch", help="resnet34, wrn16_8, wrn40_2, resnet_tiny (default: the dataset's: "
                   "digits resnet_tiny, cifar10 resnet34, svhn wrn16_8, stl10 wrn40_2)")
    g.add_argument("--arch-kwargs", type=_json_object, metavar="JSON",
                   help='extra model arguments, e.g. \'{"channels": [8, 16, 32]}\' for resnet_tiny')
    cliargs.add_widths(g, "widths in (0, 1] (oats/pgd-ats default: 0.5 0.75 1.0; oat/pgd-at: 1.0)")
    cliargs.add_lambda_set(g, "oat/oats: the training λ set (default S1 = 0 0.1 0.2 0.3 0.4 1; digits 0 0.2 0.4 0.6 "
                           "0.8 1); pgd-at/pgd-ats: the one fixed λ (default 1 = pure adversarial loss)")


def _add_optimisation_options(g) -> None:
    g.add_argument("--epochs", type=int, help="epochs (digits 30, cifar10 200, svhn 80, stl10 200, folder:/npz: 50)")
    cliargs.add_batch_size(g, "global batch size (digits 64, cifar10/svhn 128, stl10 64, folder:/npz: 32)")
    g.add_argument("--lr", type=float, help="initial learning rate, cosine-annealed per iteration "
                   "(digits 0.05, cifar10/stl10 0.1, svhn 0.01, folder:/npz: 0.05)")
    g.add_argument("--weight-decay", type=float, help="SGD weight decay (default 5e-4; momentum 0.9)")
    cliargs.add_seed(g, "seed of initial weights, shuffling, λ draws and attacks (default 0)", default=None)
    g.add_argument("--attack", help="training attack (default: digits pgd10, others pgd7; random start)")
    g.add_argument("--clean-pass", choices=("all", "weighted"),
                   help="all: every sample through the clean pass, λ = 1 too with weight 0 (the reference; "
                   "default except digits) · weighted: only samples whose clean term has weight > 0 (digits)")
    g.add_argument("--film-lr-mult", type=float, metavar="X",
                   help="learning rate of the FiLM generators relative to --lr (default 1)")
    cliargs.add_attack_radius(g, step_default="'reference' (the reference code's min(1.25ε, ε+4/255)/7 ≈ "
                              "1.43/255, the default for CIFAR-10/SVHN/STL-10)")
    g.add_argument("--eps-warmup", type=int, metavar="EPOCHS",
                   help="grow the training attack's ε (and step) linearly over the first EPOCHS epochs "
                   "(digits default: a tenth of the epochs for oat/oats, a third for pgd-at/pgd-ats; others 0 = "
                   "none); keeps adversarial training at a large ε from stalling or collapsing")


def _add_run_options(g) -> None:
    cliargs.add_data_dir(g)
    g.add_argument("--image-size", type=int, metavar="S",
                   help="folder:/npz: datasets: resize the shorter side to S and centre-crop S×S "
                   "(required when the images differ in size)")
    g.add_argument("--val-fraction", type=float, metavar="F",
                   help="folder:/npz: datasets: share of each class held out for validation (default 0.2)")
    g.add_argument("--split-seed", type=int, metavar="N",
                   help="folder:/npz: datasets: seed of the stratified train/val split (default 0)")
    g.add_argument("--workers", type=cliargs.positive_int, metavar="N",
                   help="folder: datasets: image decoding threads (default 1; the data do not depend on it)")
    g.add_argument("--max-train-images", type=int, metavar="N", help="train on the first N images only (quick runs)")
    cliargs.add_device(g, auto="CUDA when available", default=None)
    g.add_argument("--amp", help="CUDA mixed precision: auto (default: bf16 if supported, else fp16), off, bf16, fp16")
    cliargs.add_threads(g, "torch CPU threads (torch.set_num_threads; on a machine busy with other jobs use 1 or "
                        "OMP_WAIT_POLICY=PASSIVE)")
    g.add_argument("--eval-every", type=int, metavar="N", help="evaluate SA/RA on the test split every N epochs (default 0: never)")
    g.add_argument("--eval-max-images", type=int, metavar="N", help="test images per evaluation (default 500)")
    g.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (its settings are reused)")
    cliargs.add_out(g, "CKPT", "checkpoint to write (every epoch); default with --resume: CKPT")
    cliargs.add_progress(g, what="per-epoch lines only")


def _register_eval(subparsers) -> None:
    from oat_edge.training import eval_cli

    p = subparsers.add_parser("eval", help="standard and robust accuracy of a checkpoint per (λ, width)",
                              description=eval_cli.DESCRIPTION)
    eval_cli.add_eval_arguments(p)
    p.set_defaults(func=eval_cli.run_eval)


def _register_reproduce(subparsers) -> None:
    """``oat-edge reproduce`` runs the paper-reproduction harness, which lives in the source
    checkout (reproduce/), not in the installed package."""
    harness = _reproduce_harness()
    kw = dict(help="measure the paper's claims (figures 4-13) on digits, resumably (from a source checkout)",
              formatter_class=argparse.RawDescriptionHelpFormatter)
    if harness is None:
        # Every argument (options and --help too) reaches _no_harness, which says what to do.
        p = subparsers.add_parser("reproduce", description=NO_HARNESS, add_help=False, prefix_chars="+", **kw)
        p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
        p.set_defaults(func=_no_harness)
        return
    p = subparsers.add_parser("reproduce", description=harness.DESCRIPTION, epilog=harness.EPILOG, **kw)
    harness.add_arguments(p)
    p.set_defaults(func=harness.run_reproduce)


NO_HARNESS = ("The paper-reproduction harness (reproduce/) is part of the oat-edge source checkout, not of the "
              "installed package: clone the repository, install it with `pip install -e .` and run "
              "`oat-edge reproduce` there (docs/reproduction.md).")


def _reproduce_harness():
    """reproduce/cli.py of the checkout this package is installed from (an editable install),
    or None. Only that checkout is searched: a folder named reproduce/ elsewhere is never run."""
    import importlib
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "reproduce" / "cli.py").is_file():
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("reproduce.cli")


def _no_harness(args: argparse.Namespace) -> int:
    raise DependencyError(NO_HARNESS)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"channels\": [8, 16, 32]}'")
    return value


# Argument name -> TrainConfig field (only arguments the user gave are applied, so a resumed
# run keeps its stored settings unless one is given explicitly).
_FIELDS = {
    "dataset": "dataset", "method": "method", "arch": "arch", "arch_kwargs": "arch_kwargs", "widths": "widths",
    "lambdas": "lambdas", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "seed": "seed", "attack": "attack", "eps": "eps", "step_size": "step_size",
    "eps_warmup": "eps_warmup", "clean_pass": "clean_pass", "film_lr_mult": "film_lr_mult",
    "data_dir": "data_dir", "image_size": "image_size", "val_fraction": "val_fraction",
    "split_seed": "split_seed", "workers": "workers", "max_train_images": "max_train_images", "device": "device", "amp": "amp",
    "threads": "threads", "eval_every": "eval_every", "eval_max_images": "eval_max_images", "out": "out",
}


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the arguments describe (with --resume: the checkpoint's, overridden
    by what was given explicitly)."""
    from oat_edge.training.config import TrainConfig

    given = {field: getattr(args, name) for name, field in _FIELDS.items() if getattr(args, name, None) is not None}
    given["progress"] = not args.no_progress
    if args.resume:
        from oat_edge.training.state import resume_config

        given.setdefault("out", args.resume)
        return resume_config(args.resume, given)
    if "out" not in given:
        raise ConfigError("--out CKPT is required: where to write the checkpoint")
    return TrainConfig(**given)


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    config.resolved()  # bad arguments fail here, before torch and the data are loaded
    from oat_edge.fileio import check_output_file

    check_output_file(config.out, "--out checkpoint")  # not after the first epoch

    from oat_edge.training.trainers import train

    path = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {path}\nevaluate it with: oat-edge eval {path} --json results.json")
    return 0
