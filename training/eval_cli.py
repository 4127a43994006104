"""``oat-edge eval CKPT``: SA and RA (per attack) of a checkpoint at each (λ, width).

``training/cli.py`` registers the subcommand with ``add_eval_arguments`` and ``run_eval``.
Nothing heavy is imported at module level so that ``oat-edge --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oat_edge.errors import CheckpointError, ConfigError

DESCRIPTION = (
    "Measure standard accuracy (SA) and robust accuracy (RA, one column per attack) of a trained "
    "checkpoint at each (λ, width) on held-out data; print a table, optionally write JSON and PNG plots."
)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint written by `oat-edge train`")
    parser.add_argument("--lambdas", type=float, nargs="+", metavar="λ",
                        help="λ values in [0, 1] (default: the checkpoint's training λ set)")
    parser.add_argument("--widths", type=float, nargs="+", metavar="W",
                        help="trained widths to evaluate (default: all)")
    parser.add_argument("--attacks", nargs="+", default=["pgd7"], metavar="NAME",
                        help="attacks: pgd7, pgd20, pgd<N>, fgsm, mifgsm (default: pgd7)")
    parser.add_argument("--eps", type=float, default=None,
                        help="L∞ radius in [0, 1] image units (default: the dataset's, 8/255 for CIFAR/SVHN/STL)")
    parser.add_argument("--step-size", type=float, default=None,
                        help="PGD step size (default: the dataset's; ε/4 with a custom --eps)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write SA–RA trade-off and SA/RA-vs-λ PNGs here")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="folder with the dataset's official files (not needed for digits)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate on (default: test)")
    parser.add_argument("--max-images", type=int, metavar="N", help="evaluate on the first N images only")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="batch size (default: 256)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _checkpoint_summary(path: Path, payload: dict) -> dict:
    from oat_edge.fileio import sha256_file

    return {"path": str(path), "sha256": sha256_file(path), "arch": payload.get("arch"),
            "method": payload.get("method"), "epoch": payload.get("epoch")}


def run_eval(args: argparse.Namespace) -> int:
    from oat_edge.mode import check_lambda
    from oat_edge.training.attacks import make_attack

    # Cheap checks first, so a typo fails before the checkpoint and data are loaded.
    lambdas = None if args.lambdas is None else [check_lambda(v) for v in args.lambdas]
    for name in args.attacks:
        make_attack(name, eps=args.eps, step_size=args.step_size)
    for label in ("batch_size", "max_images", "threads"):
        value = getattr(args, label)
        if value is not None and value < 1:
            raise ConfigError(f"--{label.replace('_', '-')} must be ≥ 1, got {value}")

    import torch
    from rich.console import Console

    from oat_edge.checkpoint import load_model
    from oat_edge.training.datasets import dataset_info, load_dataset
    from oat_edge.training.evaluate import eval_header, evaluate_model, resolve_attacks, resolve_modes, write_eval_json

    if args.threads:
        torch.set_num_threads(args.threads)
    model, payload = load_model(args.checkpoint)
    modes = resolve_modes(model, lambdas, args.widths)  # ModeError for an untrained width
    ds_meta = payload.get("dataset")
    ds_name = ds_meta.get("name") if isinstance(ds_meta, dict) else ds_meta
    if not isinstance(ds_name, str):
        raise CheckpointError(f"{args.checkpoint} does not say which dataset it was trained on")
    info = dataset_info(ds_name)
    trained_shape = ds_meta.get("input_shape") if isinstance(ds_meta, dict) else None
    if trained_shape is not None and list(trained_shape) != info["input_shape"]:
        raise CheckpointError(
            f"{args.checkpoint} was trained on {ds_name} images of shape {list(trained_shape)}, "
            f"but {ds_name} images are {info['input_shape']}"
        )
    dataset = load_dataset(ds_name, args.split, args.data_dir)
    if args.max_images is not None:
        dataset = dataset.subset(args.max_images)
    attacks = resolve_attacks([make_attack(a, eps=args.eps, step_size=args.step_size, dataset=ds_name)
                               for a in args.attacks])
    model.to(args.device)

    console = Console()
    records = evaluate_model(
        model, dataset, lambdas=[m[0] for m in modes], widths=sorted({m[1] for m in modes}),
        attacks=attacks, batch_size=args.batch_size, progress=not args.no_progress, seed=args.seed,
    )
    header = eval_header(ds_name, attacks, len(dataset), split=args.split,
                         checkpoint=_checkpoint_summary(Path(args.checkpoint), payload))
    header["seed"] = args.seed
    console.print(_table(records, attacks, header))
    if args.json:
        write_eval_json(args.json, records, header)
        console.print(f"wrote {args.json}")
    if args.plots:
        from oat_edge.training.plots import plot_tradeoff

        for p in plot_tradeoff(records, args.plots):
            console.print(f"wrote {p}")
    return 0


def _table(records, attacks, header):
    from rich.table import Table

    settings = " · ".join(f"{a.name}: ε={a.eps:.4g}, {a.steps} step(s) of {a.step_size:.4g}" for a in attacks)
    table = Table(title=f"{header['dataset']}/{header['split']} · {header['n_images']} images", caption=settings)
    table.add_column("λ", justify="right")
    table.add_column("width", justify="right")
    table.add_column("SA %", justify="right")
    for a in attacks:
        table.add_column(f"RA {a.name} %", justify="right")
    for r in records:
        table.add_row(f"{r['lam']:g}", f"{r['width']:g}", f"{100 * r['sa']:.2f}",
                      *[f"{100 * r['ra'][a.name]:.2f}" for a in attacks])
    return table
