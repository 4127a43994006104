"""Background baking with verdicts: one interleaved ``oat-edge bench --bake`` run
(optionally with ``--tune-threads``), its acceptance figures (scripts/bench_acceptance.py) and report.

    python scripts/bench_baking.py --bundle demo_out/bundle --checkpoint demo_out/ckpt.pt --threads 1
    python scripts/bench_baking.py --name resnet34 --bundle R34_BUNDLE --threads 2 --tune-threads

Writes benchmarks/results/bake_bench[_NAME].{json,md} and benchmarks/results/bake_bench_NAME/
(report.md, bench.json, PNGs); NAME defaults to digits (whose files keep the plain name). The
bundle needs baked exports (``--bake-lambdas 0 1``): the held-mode figure compares a mode baked
at run time with the export of the same mode.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None, help="the digits bundle (needed unless --redraw)")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--modes", nargs="+", default=["0:0.5", "0.5:0.5", "1:0.5", "0:0.75", "0.5:0.75", "1:0.75",
                                                    "0:1", "0.5:1", "1:1"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=0.3)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--note", default=None)
    p.add_argument("--name", default="digits", help="model name for the output files (default digits)")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--tune-threads", action="store_true", help="also tune intra-op threads per path (bench --tune-threads)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--redraw", action="store_true", help="measure nothing: re-derive verdicts and reports from the saved JSON")
    args = p.parse_args(argv)
    if args.bundle is None and not args.redraw:
        p.error("--bundle is required (unless --redraw)")

    from bench_acceptance import acceptance
    from oat_edge.bench import report
    from oat_edge.bench.run import run_benchmark, write_outputs
    from oat_edge.fileio import atomic_write_json, atomic_write_text

    command = shlex.join(["python", "scripts/bench_baking.py"] + (sys.argv[1:] if argv is None else list(argv)))
    out = args.out_dir / f"bake_bench_{args.name}"
    stem = "bake_bench" if args.name == "digits" else f"bake_bench_{args.name}"
    title = args.title or ("Background baking: digits demo model (resnet_tiny, 8×8)" if args.name == "digits"
                           else f"Background baking: {args.name}")
    if args.redraw:
        import json

        saved = json.loads((args.out_dir / f"{stem}.json").read_text())
        res, command, args.note = saved["runs"][args.name], saved["command"], saved.get("note")
        res["acceptance"] = acceptance(res)
        report.write_markdown(res, out / "report.md")
        atomic_write_json(out / "bench.json", res)
    else:
        res = run_benchmark(args.bundle, backend="onnxruntime", batches=args.batch, modes=args.modes,
                            warmup_s=args.warmup, duration_s=args.duration, rounds=args.rounds, threads=args.threads,
                            checkpoint=args.checkpoint, progress=True, command=command, bake=True,
                            tune_threads=args.tune_threads)
        res["acceptance"] = acceptance(res)
        if args.note:
            res["note"] = args.note
        write_outputs(res, report_dir=out, write_profile=False)
    summary = [{k: a[k] for k in ("id", "criterion", "value", "target", "verdict", "why", "to_close")}
               for a in res["acceptance"]]
    atomic_write_json(args.out_dir / f"{stem}.json", {"schema": "oat-edge/bench-suite", "schema_version": 1,
                                                      "command": command, "note": args.note,
                                                      "acceptance": summary, "runs": {args.name: res}})
    atomic_write_text(args.out_dir / f"{stem}.md",
                      report.markdown(res, title=title, image_prefix=f"bake_bench_{args.name}/", level=1))
    for a in summary:
        print(f"{a['verdict']:>12}  {a['criterion']}: {a['value']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
