"""The standard on-device latency benchmark (`oat-edge bench`) on two models, with verdicts.

1. digits — the CPU demo model (resnet_tiny on 8×8 digits, widths 0.5/0.75/1.0, λ = 0 and 1
   baked): every mode of the calibration grid (or training λ ∪ unseen λ) at batch 1, 8, 32,
   PyTorch eager, FiLM-as-input vs baked, switch cost, load time, memory.
2. a bigger model where width matters (--big): ``resnet34`` (the paper's CIFAR ResNet-34,
   random weights, 32×32, widths 0.5/1.0) or ``resnet_wide`` (resnet_tiny with channels
   64/128/256 at 32×32, 3 channels: ~0.19 GMAC at width 1.0, exports in a fraction of the time).
   Weights do not change latency; they are random because no CIFAR data ships here.

Each model is one interleaved `run_benchmark` (docs/benchmarking.md); the acceptance figures of
both land in one table. Writes benchmarks/results/runtime_bench.{json,md} and, per model,
benchmarks/results/runtime_bench_<model>/ (report.md, bench.json, PNGs); the latency profiles
go into the bundles.

    python scripts/bench_suite.py                       # digits + resnet_wide, all CPUs
    python scripts/bench_suite.py --big resnet34 --threads 4 --note "Orin, MAXN, jetson_clocks"
    python scripts/bench_suite.py --digits-bundle demo_out/bundle --digits-ckpt demo_out/ckpt.pt
    python scripts/bench_suite.py --quick               # smoke-sized
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "out" / "bench_suite"  # checkpoints and bundles this script builds (git-ignored)
BIG = {
    # name: (arch, arch kwargs, input shape)
    "resnet34": ("resnet34", {}, [3, 32, 32]),
    "resnet_wide": ("resnet_tiny", {"channels": [64, 128, 256], "in_chans": 3, "mean": [0.5, 0.5, 0.5],
                                    "std": [0.5, 0.5, 0.5]}, [3, 32, 32]),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--digits-ckpt", type=Path, default=None,
                   help="trained digits checkpoint (default demo_out/ckpt.pt if present, else random weights)")
    p.add_argument("--digits-bundle", type=Path, default=None,
                   help="use this digits bundle as is (default: export one from the checkpoint into out/bench_suite)")
    p.add_argument("--big", choices=sorted(BIG) + ["none"], default="resnet34",
                   help="the bigger model where width matters (default resnet34: ~2.5 min to export on 2 CPU cores; "
                   "resnet_wide exports faster)")
    p.add_argument("--big-rounds", type=int, default=3, help="rounds for the bigger model (default 3: batch 32 is slow)")
    p.add_argument("--rebuild", action="store_true", help="re-export the bundles even if the work dir has them")
    p.add_argument("--backend", default="auto", help="runtime backend (default auto)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="threads for ORT and torch (default: all allowed CPUs)")
    p.add_argument("--pin", action="store_true", help="pin to the first N CPUs")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=0.3, help="seconds per variant and round (default 0.3)")
    p.add_argument("--warmup", type=float, default=0.2)
    p.add_argument("--quick", action="store_true", help="2 rounds × 0.05 s, fewer modes (smoke test of the script)")
    p.add_argument("--note", default=None, help="recorded in the reports (machine state, power mode, ...)")
    p.add_argument("--redraw", action="store_true",
                   help="measure nothing: re-derive verdicts, charts and markdown from OUT_DIR/runtime_bench.json")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--work-dir", type=Path, default=WORK)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.big_rounds = 2, 0.05, 0.02, 2
    return args


def save_random_checkpoint(path: Path, arch: str, kwargs: dict, input_shape, widths, dataset: str) -> Path:
    import torch

    from oat_edge.checkpoint import save_checkpoint
    from oat_edge.models import create_model

    torch.manual_seed(0)
    kw = {**kwargs, "widths": list(widths)}
    model = create_model(arch, **kw)
    return save_checkpoint(path, {"arch": arch, "arch_kwargs": kw, "model": model.state_dict(), "method": "oats",
                                  "dataset": {"name": dataset, "num_classes": 10, "input_shape": list(input_shape)},
                                  "config": {"note": "random weights: latency benchmark only"}, "epoch": 0})


def export_for_bench(ckpt: Path, out: Path, widths, bake, calibrate: bool, batch=(1, 8, 64), rebuild: bool = False) -> Path:
    from oat_edge.export import export_bundle

    if not rebuild and (out / "manifest.json").is_file() and (out / "manifest.json").stat().st_mtime > ckpt.stat().st_mtime:
        print(f"reusing {out} (--rebuild to export again)", flush=True)
        return out
    t0 = time.perf_counter()
    export_bundle(ckpt, out, widths=widths, batch=batch, bake=bake, calibrate=calibrate, tensorrt="off", force=True,
                  progress=True, parity_images=16, calib_max_images=360 if calibrate else None)
    print(f"exported {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def digits_inputs(args) -> tuple:
    """(bundle, checkpoint, description) of the digits model."""
    ckpt = args.digits_ckpt or (ROOT / "demo_out" / "ckpt.pt")
    trained = ckpt.is_file()
    if args.digits_bundle is not None:
        return args.digits_bundle, (ckpt if trained else None), f"given bundle {args.digits_bundle}"
    work = args.work_dir / "digits"
    work.mkdir(parents=True, exist_ok=True)
    if not trained:
        ckpt = work / "ckpt_random.pt"
        if args.rebuild or not ckpt.is_file():
            save_random_checkpoint(ckpt, "resnet_tiny", {}, [1, 8, 8], (0.5, 0.75, 1.0), "digits")
        desc = "resnet_tiny (16/32/64) digits shape, RANDOM weights (no trained checkpoint found: no SA/RA calibration)"
    else:
        desc = f"trained digits checkpoint {ckpt}, calibrated at export (first 360 test images)"
    bundle = export_for_bench(ckpt, work / ("bundle" if trained else "bundle_random"), None, (0.0, 1.0), calibrate=trained,
                     rebuild=args.rebuild)
    return bundle, ckpt, desc


def big_inputs(args) -> tuple:
    arch, kwargs, shape = BIG[args.big]
    work = args.work_dir / args.big
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "ckpt.pt"
    if args.rebuild or not ckpt.is_file():
        save_random_checkpoint(ckpt, arch, kwargs, shape, (0.5, 1.0), "cifar10")
    bundle = export_for_bench(ckpt, work / "bundle", None, (1.0,), calibrate=False, batch=(1, 8, 32), rebuild=args.rebuild)
    return bundle, ckpt, f"{arch} {kwargs or ''} at {shape}, random weights, widths 0.5/1.0, λ = 1 baked"


def run_one(name: str, bundle: Path, ckpt, desc: str, args, modes, batches, rounds=None) -> dict:
    from bench_acceptance import acceptance
    from oat_edge.bench.run import run_benchmark, write_outputs
    from oat_edge.bundle import load_manifest

    prof = load_manifest(bundle, verify_hashes=False)["batch"]
    fit = [b for b in batches if int(prof["min"]) <= b <= int(prof["max"])]
    if fit != list(batches):
        print(f"note: the bundle's batch profile is {prof['min']}..{prof['max']}: benchmarking batches {fit}", flush=True)
    batches = fit
    print(f"\n== {name}: {desc}", flush=True)
    res = run_benchmark(bundle, backend=args.backend, device=args.device, batches=batches, modes=modes,
                        warmup_s=args.warmup, duration_s=args.duration, rounds=rounds or args.rounds, threads=args.threads,
                        checkpoint=ckpt, pin=args.pin, progress=True,
                        command=_command())
    res["model_description"] = desc
    res["acceptance"] = acceptance(res)
    if args.note:
        res["note"] = args.note
    out = args.out_dir / f"runtime_bench_{name}"
    write_outputs(res, report_dir=out, write_profile=True)
    return res


def _command() -> str:
    return shlex.join(["python", "scripts/bench_suite.py"] + sys.argv[1:])


def combined_markdown(runs: dict, args, command: str) -> str:
    from oat_edge.bench import report

    first = next(iter(runs.values()))
    lines = ["# Runtime latency benchmark (`oat-edge bench`)", "",
             f"Measured {first['created']} by `{command}`; report written "
             f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}. Method: docs/benchmarking.md "
             "(interleaved rounds, medians across rounds, ratios from the same run).", ""]
    if args.note:
        lines += [f"> **Note.** {args.note}", ""]
    dev = first["device"]
    lines += [f"Device: {dev.get('cpu_model')}, {dev.get('logical_cpus')} logical CPUs; backend "
              f"{first['config']['backend']}, {first['config']['threads']} thread(s); "
              f"load average {dev.get('loadavg', [0])[0]:.2f} at the start.", ""]
    lines += ["## Acceptance figures", ""]
    rows = []
    for name, res in runs.items():
        for a in res["acceptance"]:
            rows.append([name, a["criterion"], report.fmt(a["value"]), "—" if a["target"] is None else report.fmt(a["target"]),
                         f"**{a['verdict']}**", a["detail"]])
    lines += [report.table(["model", "figure", "measured", "target", "verdict", "detail"], rows), ""]
    misses = [(n, a) for n, res in runs.items() for a in res["acceptance"] if a["verdict"] not in ("PASS", "INFO")]
    if misses:
        lines += ["### Misses and unmeasured figures: why, and what would close them", ""]
        lines += [f"- **{n}: {a['criterion']}** — {a['verdict']}. Why: {a['why']}. To close: {a['to_close']}."
                  for n, a in misses]
        lines.append("")
    for name, res in runs.items():
        res = {k: v for k, v in res.items() if k != "note"}  # said once, above
        lines += [report.markdown(res, title=f"{name}: {res['model_description']}", image_prefix=f"runtime_bench_{name}/",
                              level=2), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.redraw:
        return redraw(args)
    runs = {}
    bundle, ckpt, desc = digits_inputs(args)
    digits_modes = (["0:0.5", "0.2:0.75", "1:0.5", "1:0.75", "1:1", "0:1", "0.5:1", "0.37:1"] if args.quick else None)
    runs["digits"] = run_one("digits", bundle, ckpt, desc, args, digits_modes, (1, 8, 32))
    if args.big != "none":
        bundle, ckpt, desc = big_inputs(args)
        runs[args.big] = run_one(args.big, bundle, ckpt, desc, args, ["0:0.5", "0:1", "1:0.5", "1:1"], (1, 32),
                                 rounds=min(args.big_rounds, args.rounds))
    write_suite(runs, args, _command())
    return 0


def write_suite(runs: dict, args, command: str) -> None:
    from oat_edge.fileio import atomic_write_json, atomic_write_text

    summary = [{"model": n, **{k: a[k] for k in ("id", "criterion", "value", "target", "verdict", "why", "to_close")}}
               for n, res in runs.items() for a in res["acceptance"]]
    atomic_write_json(args.out_dir / "runtime_bench.json",
                      {"schema": "oat-edge/bench-suite", "schema_version": 1, "note": args.note,
                       "command": command, "acceptance": summary, "runs": runs})
    atomic_write_text(args.out_dir / "runtime_bench.md", combined_markdown(runs, args, command))
    for s in summary:
        print(f"{s['verdict']:>12}  {s['model']:<12} {s['criterion']}: {s['value']}")
    print(f"wrote {args.out_dir / 'runtime_bench.md'} and {args.out_dir / 'runtime_bench.json'}")


def redraw(args) -> int:
    """Rewrite verdicts, per-model reports, charts and the combined markdown from the saved JSON."""
    from bench_acceptance import acceptance
    from oat_edge.bench import plots, report
    from oat_edge.fileio import atomic_write_json

    suite = json.loads((args.out_dir / "runtime_bench.json").read_text())
    args.note = args.note or suite.get("note")
    for name, res in suite["runs"].items():
        res["acceptance"] = acceptance(res)
        out = args.out_dir / f"runtime_bench_{name}"
        res.setdefault("outputs", {})["plots"] = [str(p) for p in plots.write_plots(res, out)]
        report.write_markdown(res, out / "report.md")
        atomic_write_json(out / "bench.json", res)
    write_suite(suite["runs"], args, suite.get("command") or _command())
    return 0


if __name__ == "__main__":
    sys.exit(main())
