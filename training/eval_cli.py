"""``oat-edge eval CKPT``: SA and RA (per attack) of a checkpoint at each (λ, width).

``training/cli.py`` registers the subcommand with ``add_eval_arguments`` and ``run_eval``.
Nothing heavy is imported at module level so that ``oat-edge --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oat_edge import cliargs
from oat_edge.errors import CheckpointError, ConfigError

DESCRIPTION = (
    "Measure standard accuracy (SA) and robust accuracy (RA) of a trained checkpoint at each (λ, width) "
    "on held-out data: one column per attack and the worst case over the ensemble per image (the robust "
    "metric), plus gradient-masking checks; print a table, optionally write JSON and PNG plots."
)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint written by `oat-edge train`")
    cliargs.add_lambda_set(parser, "λ values in [0, 1] (default: the checkpoint's training λ set)")
    cliargs.add_widths(parser, "trained widths to evaluate (default: all)")
    _add_attack_options(parser)
    cliargs.add_json(parser, "the results (the table then goes to standard error)")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write SA–RA trade-off and SA/RA-vs-λ PNGs here")
    cliargs.add_data_dir(parser)
    parser.add_argument("--split", choices=("train", "val", "test"),
                        help="split to evaluate on (default: test; val for folder:/npz: datasets)")
    parser.add_argument("--max-images", type=int, metavar="N", help="evaluate on the first N images only")
    cliargs.add_batch_size(parser, "batch size (default: 256)", default=256)
    cliargs.add_threads(parser, "torch CPU threads")
    cliargs.add_jobs(parser, what="evaluate modes in N CPU worker processes of one thread each (default: the "
                     "number of CPU cores, at most 4; 1 on a GPU)")
    cliargs.add_device(parser, auto="CUDA when available", default="cpu")
    cliargs.add_seed(parser, "seed of the attacks' random starts (default: 0)")
    cliargs.add_progress(parser)
    return parser


def _add_attack_options(parser) -> None:
    parser.add_argument("--attacks", nargs="+", default=None, metavar="NAME",
                        help="the attack ensemble: pgd<N>, fgsm, mifgsm, apgd-ce, apgd-dlr, apgd-t, square "
                        "(default: pgd7 apgd-ce apgd-dlr square); RA is reported per attack and as the "
                        "per-image worst case over all of them")
    parser.add_argument("--restarts", type=int, default=None, metavar="N",
                        help="random restarts of the APGD attacks (default: 1)")
    parser.add_argument("--masking-checks", action=argparse.BooleanOptionalAction, default=True,
                        help="check for gradient masking (PGD 7/20/100 steps, RA at ε = 1, transfer from "
                        "--surrogate) at the smallest and largest λ of every width, and at every mode that "
                        "the gradient-free attack does not beat the gradient attacks (default: on)")
    parser.add_argument("--surrogate", type=Path, metavar="CKPT",
                        help="a separately trained checkpoint on the same data to transfer attacks from "
                        "(the transfer check is skipped without one)")
    cliargs.add_attack_radius(parser, step_default="the dataset's; ε/4 with a custom --eps", step_names=False,
                              eps_default="the ε the checkpoint was trained with, else the dataset's: 8/255 "
                              "for CIFAR/SVHN/STL")


def _checkpoint_summary(path: Path, payload: dict) -> dict:
    from oat_edge.fileio import sha256_file

    return {"path": str(path), "sha256": sha256_file(path), "arch": payload.get("arch"),
            "method": payload.get("method"), "epoch": payload.get("epoch")}


def run_eval(args: argparse.Namespace) -> int:
    lambdas, attack_names = _check_arguments(args)
    from rich.console import Console

    from oat_edge.training.evaluate import eval_header, evaluate_model, resolve_attacks, trained_eps

    model, payload, modes, ds_name, dataset = _load(args, lambdas)
    eps = args.eps if args.eps is not None else trained_eps(payload)  # the model's own threat model
    attacks = resolve_attacks(attack_names, ds_name, eps=eps, step_size=args.step_size, restarts=args.restarts)
    model.to(args.device)
    console = Console(stderr=args.json == "-")  # standard output carries the JSON then
    records = evaluate_model(
        model, dataset, modes=modes, attacks=attacks, batch_size=args.batch_size,
        progress=not args.no_progress, seed=args.seed, jobs=args.jobs,
    )
    header = eval_header(ds_name, attacks, len(dataset), split=args.split,
                         checkpoint=_checkpoint_summary(Path(args.checkpoint), payload))
    header["seed"] = args.seed
    console.print(_table(records, attacks, header))
    _report(args, console, records, header, lambda: _masking_checks(args, model, dataset, records, attacks, ds_name))
    return 0


def _check_arguments(args: argparse.Namespace):
    """The cheap checks, so a typo fails before the checkpoint and data are loaded; sets the
    device and the worker processes."""
    from oat_edge.mode import check_lambda
    from oat_edge.training.attacks import DEFAULT_ENSEMBLE, make_attack
    from oat_edge.training.distributed import pick_device
    from oat_edge.training.evaluate import default_jobs

    lambdas = None if args.lambdas is None else [check_lambda(v) for v in args.lambdas]
    attack_names = list(DEFAULT_ENSEMBLE) if args.attacks is None else args.attacks
    for name in attack_names:
        make_attack(name, eps=args.eps, step_size=args.step_size, restarts=args.restarts)
    if args.surrogate is not None and not args.surrogate.is_file():
        raise ConfigError(f"--surrogate {args.surrogate}: no such file")
    for label in ("batch_size", "max_images", "restarts"):
        value = getattr(args, label)
        if value is not None and value < 1:
            raise ConfigError(f"--{label.replace('_', '-')} must be ≥ 1, got {value}")
    args.device = str(pick_device(cliargs.check_device(args.device)))
    args.jobs = default_jobs(args.device) if args.jobs is None else args.jobs
    from oat_edge.fileio import check_output_dir

    cliargs.check_json_target(args.json)  # before the evaluation, not after it
    if args.plots:
        check_output_dir(args.plots, "--plots folder")
    return lambdas, attack_names


def _load(args: argparse.Namespace, lambdas):
    """The checkpoint's model, the modes to evaluate, and its dataset's held-out images."""
    import torch

    from oat_edge.checkpoint import load_model
    from oat_edge.training.datasets import dataset_info, dataset_options, eval_split, load_dataset
    from oat_edge.training.evaluate import resolve_modes

    if args.threads:
        torch.set_num_threads(args.threads)
    model, payload = load_model(args.checkpoint)
    modes = resolve_modes(model, lambdas, args.widths)  # ModeError for an untrained width
    ds_meta = payload.get("dataset")
    ds_name = ds_meta.get("name") if isinstance(ds_meta, dict) else ds_meta
    if not isinstance(ds_name, str):
        raise CheckpointError(f"{args.checkpoint} does not say which dataset it was trained on")
    options = dataset_options(ds_meta)
    info = dataset_info(ds_name, options)
    trained_shape = ds_meta.get("input_shape") if isinstance(ds_meta, dict) else None
    if trained_shape is not None and list(trained_shape) != info["input_shape"]:
        raise CheckpointError(
            f"{args.checkpoint} was trained on {ds_name} images of shape {list(trained_shape)}, "
            f"but {ds_name} images are {info['input_shape']}"
        )
    if args.split is None:
        args.split = eval_split(ds_name)
    dataset = load_dataset(ds_name, args.split, args.data_dir, options)
    if args.max_images is not None:
        dataset = dataset.subset(args.max_images)
    return model, payload, modes, ds_name, dataset


def _report(args, console, records, header, masking_checks) -> None:
    """The knob summary, the masking checks, and the JSON and plot files."""
    from oat_edge.training.evaluate import eval_json_doc, format_knob, knob_summary

    knob = knob_summary(records)
    for line in format_knob(knob):
        console.print(line)
    if knob:
        header["knob"] = knob
    if args.masking_checks:
        header["masking_checks"] = masking_checks()
        _print_checks(console, header["masking_checks"])
    if args.json:
        cliargs.json_out(args.json, eval_json_doc(records, header))
        if args.json != "-":
            console.print(f"wrote {args.json}")
    if args.plots:
        from oat_edge.training.plots import plot_tradeoff

        for p in plot_tradeoff(records, args.plots):
            console.print(f"wrote {p}")


def _masking_checks(args, model, dataset, records, attacks, ds_name):
    from oat_edge.checkpoint import load_model
    from oat_edge.training.evaluate import WORST_CASE
    from oat_edge.training.masking import black_box_checks, masking_checks

    by_width = {}
    for r in records:
        by_width.setdefault(r["width"], []).append(r["lam"])
    modes = [(lam, w) for w, lams in by_width.items() for lam in sorted({min(lams), max(lams)})]
    surrogate = surrogate_lam = None
    if args.surrogate is not None:
        surrogate, payload = load_model(args.surrogate)
        s_ds = payload.get("dataset") or {}
        if (s_ds.get("name") if isinstance(s_ds, dict) else s_ds) != ds_name:
            raise CheckpointError(f"--surrogate {args.surrogate} was not trained on {ds_name}")
        surrogate.to(args.device)
        surrogate_lam = surrogate.train_lambdas[-1]
    pgd = next((a for a in attacks if getattr(a, "step_size", None) and a.name.startswith("pgd")), None)
    eps = attacks[0].eps
    step = pgd.step_size if pgd is not None else _pgd_step(ds_name, eps)
    # The transfer check compares with what the gradient attacks alone found.
    worst = {(r["lam"], r["width"]): r.get("white_box", r["ra"][WORST_CASE]) for r in records}
    return black_box_checks(records, attacks) + masking_checks(
        model, dataset, modes, worst, eps, step, surrogate=surrogate, surrogate_lam=surrogate_lam,
        batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress, jobs=args.jobs)


def _pgd_step(ds_name, eps):
    from oat_edge.training.attacks import make_attack

    return make_attack("pgd7", eps=eps, dataset=ds_name).step_size


def _print_checks(console, checks):
    from oat_edge.training.masking import failed

    bad = failed(checks)
    # A failed black-box check leaves the worst case valid (it includes the black-box attack);
    # the other failures put the figure itself in doubt.
    misled = [c for c in bad if c["check"] == "black_box"]
    doubt = [c for c in bad if c["check"] != "black_box"]
    skipped = [c for c in checks if c["passed"] is None]
    ran = len(checks) - len(skipped)
    kinds = sorted({c["check"] for c in checks if c["passed"] is not None})
    if not bad:
        console.print(f"gradient-masking checks: {ran} of {ran} passed ({', '.join(kinds)})")
    if doubt:
        console.print(f"[bold yellow]warning: {len(doubt)} of {ran} gradient-masking checks failed — "
                      "do not trust the robust accuracy above until this is explained:[/]")
        for c in doubt:
            console.print(f"  [yellow]{c['check']}[/] at λ={c['lam']:g} width={c['width']:g}: {c['detail']}")
    if misled:
        gains = [c["values"]["white_box_ra"] - c["values"]["worst_case"] for c in misled]
        console.print(f"[yellow]note: at {len(misled)} of {sum(c['check'] == 'black_box' for c in checks)} modes the "
                      f"gradient-free attack broke {100 * min(gains):.1f}–{100 * max(gains):.1f} points of images that "
                      "every gradient attack missed (black_box check): the gradients mislead the white-box attacks "
                      "there. The worst case above includes it and holds; a white-box-only figure would not.[/]")
        by_width = {}
        for c in misled:
            gain = 100 * (c["values"]["white_box_ra"] - c["values"]["worst_case"])
            by_width.setdefault(c["width"], []).append(f"λ={c['lam']:g} {gain:.1f}")
        for width, items in by_width.items():
            console.print(f"  points Square added at width {width:g}: " + ", ".join(items))
    if bad and not doubt:
        console.print(f"the other gradient-masking checks passed ({', '.join(k for k in kinds if k != 'black_box')})")
    for c in skipped:
        console.print(f"  {c['check']}: {c['detail']}")


def _attack_setting(a) -> str:
    d = a.describe()
    parts = [f"ε={a.eps:.4g}", f"{d['steps']} steps" if "steps" in d else "",
             f"{d['queries']} queries (gradient-free)" if "queries" in d else "",
             "on the images the attacks before it left (its column is the worst case so far)" if "scope" in d else ""]
    if isinstance(d.get("step_size"), float):
        parts.append(f"of {d['step_size']:.4g}")
    if d.get("restarts", 1) > 1:
        parts.append(f"{d['restarts']} restarts")
    if d.get("targets"):
        parts.append(f"{d['targets']} targets")
    return f"{a.name}: " + " ".join(p for p in parts if p)


def _table(records, attacks, header):
    from rich.table import Table

    from oat_edge.training.evaluate import WORST_CASE

    settings = " · ".join(_attack_setting(a) for a in attacks)
    table = Table(title=f"{header['dataset']}/{header['split']} · {header['n_images']} images",
                  caption=f"{settings}\nworst case: per image, correct clean and under every attack (± standard error)")
    table.add_column("λ", justify="right")
    table.add_column("width", justify="right")
    table.add_column("SA %", justify="right")
    for a in attacks:
        table.add_column(f"RA {a.name} %", justify="right")
    table.add_column("RA worst case %", justify="right", style="bold")
    for r in records:
        table.add_row(f"{r['lam']:g}", f"{r['width']:g}", f"{100 * r['sa']:.2f}",
                      *[f"{100 * r['ra'][a.name]:.2f}" for a in attacks],
                      f"{100 * r['ra'][WORST_CASE]:.2f} ± {100 * r['se']:.1f}")
    return table
