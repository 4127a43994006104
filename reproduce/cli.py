"""The options and the run of ``oat-edge reproduce`` (training/cli.py imports this module from
the source checkout): the paper's claims measured on digits (``--suite default|quick``), or the
full-scale recipes on CIFAR-10 / SVHN / STL-10 (``--suite cifar10|svhn|stl10 --data-dir``)."""

from __future__ import annotations

import argparse
import sys

from oat_edge import cliargs
from oat_edge.errors import ConfigError

DESCRIPTION = (
    "Reproduce the OAT paper's figures on digits with our own training and the worst-case evaluation: "
    "OAT vs dedicated PGD-AT per λ (Fig. 4/8, with the normal-BN ablation), unseen λ (Fig. 5), OATS vs "
    "PGD-ATS per width (Fig. 6/9), λ encodings (Fig. 13), saliency (Figs. 10-12) and training cost. Every "
    "model is a checkpoint under --out; run the same command again to continue an interrupted suite. "
    "Writes DIR/results.json, DIR/report.md and PNGs (docs/reproduction.md explains them)."
)

EPILOG = """examples:
  oat-edge reproduce --suite quick --out /tmp/repro-quick        # ~3 min smoke test of every figure
  oat-edge reproduce --out repro --jobs 2                        # the default suite (3 seeds)
  oat-edge reproduce --report-only --out repro                   # re-render report.md from results.json
  oat-edge reproduce --suite cifar10 --data-dir ~/data --out c10 # the full-scale recipe (GPUs)
  oat-edge reproduce --suite svhn --data-dir ~/data --dry-run    # print its commands only
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from reproduce.suite import SUITE_NAMES

    p.add_argument("--suite", choices=SUITE_NAMES, default="default",
                   help="default: every figure on digits, 3 seeds (≤ 60 min on 2 CPU cores) · quick: the same "
                   "figures on tiny models, 1 seed (≤ 3 min) · cifar10/svhn/stl10: the paper's full-scale recipes")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds per model (default: 3, quick 1)")
    cliargs.add_out(p, "DIR", "output folder (checkpoints, results, report)", default="reproduction")
    cliargs.add_jobs(p, default=2, what="one torch thread each (default 2: one per core of a 2-core machine)")
    cliargs.add_data_dir(p, "for --suite cifar10/svhn/stl10")
    p.add_argument("--dry-run", action="store_true",
                   help="--suite cifar10/svhn/stl10: print the commands and the paper's numbers, run nothing")
    p.add_argument("--report-only", action="store_true", help="re-render report.md and the PNGs from DIR/results.json")
    cliargs.add_progress(p)


def run_reproduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reproduce.suite import FULL_SCALE

    out = Path(args.out)
    if args.report_only:
        from reproduce.report import write_report

        path = write_report(out / "results.json", out)
        print(f"report: {path}")
        return 0
    if args.suite in FULL_SCALE:
        return _full_scale(args)
    if args.data_dir or args.dry_run:
        raise ConfigError("--data-dir and --dry-run are for --suite cifar10/svhn/stl10; digits ships with scikit-learn")
    from reproduce.runner import execute_suite
    from reproduce.suite import build_suite

    suite = build_suite(args.suite, args.seeds)
    for note in suite.missing:
        print(f"reproduce: left out: {note}", file=sys.stderr)
    path = execute_suite(suite, out, jobs=args.jobs, progress=not args.no_progress)
    print(f"results: {path}\nreport: {out / 'report.md'}")
    return 0


def _full_scale(args) -> int:
    from reproduce.recipes import FULL_SCALE_SUITES, run_full_scale

    if args.suite not in FULL_SCALE_SUITES:
        raise ConfigError(f"no full-scale recipe {args.suite!r}; known: {', '.join(FULL_SCALE_SUITES)}")
    if not args.data_dir:
        raise ConfigError(f"--suite {args.suite} needs --data-dir (the dataset's official files)")
    kwargs = {"dry_run": args.dry_run} if args.seeds is None else {"dry_run": args.dry_run, "seeds": args.seeds}
    run_full_scale(args.suite, args.data_dir, args.out, **kwargs)
    return 0
