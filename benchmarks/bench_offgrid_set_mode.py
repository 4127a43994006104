"""Cost of ``Runtime.set_mode`` on the caller's thread: grid λ (a table lookup) against off-grid
λ (the exact FiLM generators run inside the call), for the digits demo bundle and a ResNet-34
OATS bundle (random weights: the cost does not depend on them).

    python benchmarks/bench_offgrid_set_mode.py --digits-bundle demo_out/bundle

Each call alternates an off-grid λ (uniform in (0, 1), a fresh value every time) and the grid λ
1.0, cycling through the widths, so every off-grid call computes a new FiLM vector. Writes
benchmarks/results/offgrid_set_mode.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def measure(bundle: Path, calls: int, seed: int = 0) -> dict:
    from oat_edge.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsigned local bundles
        rt = Runtime(bundle)
    try:
        lams = np.random.default_rng(seed).uniform(0.001, 0.999, calls)
        widths = list(rt.widths)
        off, grid = [], []
        for i, lam in enumerate(lams):
            w = widths[i % len(widths)]
            t = time.perf_counter_ns()
            rt.set_mode(float(lam), w)
            off.append(time.perf_counter_ns() - t)
            t = time.perf_counter_ns()
            rt.set_mode(1.0, w)
            grid.append(time.perf_counter_ns() - t)
        warm = min(100, calls // 10)  # first calls: caches and allocator warm-up
        return {"bundle": str(bundle), "widths": widths, "calls": calls - warm,
                "offgrid_us": _summary(off[warm:]), "grid_us": _summary(grid[warm:])}
    finally:
        rt.close()


def _summary(ns) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1000.0
    return {k: round(float(np.percentile(a, q)), 2) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}


def main(argv=None) -> int:
    import bench_runtime as br
    from oat_edge.fileio import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits-bundle", type=Path, required=True, help="the demo bundle (./demo.sh writes demo_out/bundle)")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--work-dir", type=Path, default=ROOT / "out" / "bench_offgrid")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    r34 = args.work_dir / "resnet34_bundle"
    if not (r34 / "manifest.json").is_file():
        ck = br._save_random_checkpoint(args.work_dir / "resnet34.pt", "resnet34", {}, [3, 32, 32], [0.5, 1.0], "cifar10")
        br._export(ck, r34, [0.5, 1.0], bake=[], calibrate=False, batch=(1, 8, 32), rebuild=True)
    res = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
           "goal": "off-grid p99 ≤ 50 µs (issue 12)",
           "models": {"digits": measure(args.digits_bundle, args.calls), "resnet34": measure(r34, args.calls)}}
    atomic_write_json(args.out_dir / "offgrid_set_mode.json", res)
    lines = ["# set_mode on the caller's thread: grid vs off-grid λ", "",
             f"Created {res['created']}. {args.calls} calls of each kind per model, alternating; µs.", "",
             "| model | kind | p50 | p90 | p99 | goal (off-grid p99 ≤ 50 µs) |", "|---|---|---:|---:|---:|---|"]
    for name, m in res["models"].items():
        for kind in ("grid", "offgrid"):
            s = m[f"{kind}_us"]
            verdict = ("MET" if s["p99"] <= 50 else "MISSED") if kind == "offgrid" else "—"
            lines.append(f"| {name} | {kind} | {s['p50']} | {s['p90']} | {s['p99']} | {verdict} |")
    atomic_write_text(args.out_dir / "offgrid_set_mode.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
