"""Cost of ``Runtime.set_mode`` on the caller's thread: grid λ (a table lookup) against off-grid
λ, under both off-grid policies (``sync``: the exact FiLM generators run inside the call;
``async``: a worker computes them), for the digits demo bundle and a ResNet-34 OATS bundle
(random weights: the cost does not depend on them).

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


def measure(bundle: Path, calls: int, seed: int = 0, offgrid: str = "sync") -> dict:
    """set_mode call times (µs) under one off-grid policy. "async" also records the set_mode →
    live time of each off-grid request (the worker's own clock, waited for before the next call)
    and grid calls made right after an off-grid request, while the worker computes."""
    from oat_edge.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsigned local bundles
        rt = Runtime(bundle, offgrid=offgrid)
    try:
        lams = np.random.default_rng(seed).uniform(0.001, 0.999, calls)
        widths = list(rt.widths)
        off, grid, grid_during = [], [], []
        for i, lam in enumerate(lams):
            w = widths[i % len(widths)]
            t = time.perf_counter_ns()
            rt.set_mode(float(lam), w)
            off.append(time.perf_counter_ns() - t)
            if offgrid == "async":
                rt.wait_mode()
            t = time.perf_counter_ns()
            rt.set_mode(1.0, w)
            grid.append(time.perf_counter_ns() - t)
            if offgrid == "async" and i % 4 == 0:  # a grid call that overtakes a request in flight
                rt.set_mode(float(lams[-1 - i]), w)
                t = time.perf_counter_ns()
                rt.set_mode(1.0, w)
                grid_during.append(time.perf_counter_ns() - t)
                rt.wait_mode()
        warm = min(100, calls // 10)  # first calls: caches and allocator warm-up
        out = {"bundle": str(bundle), "widths": widths, "policy": offgrid, "calls": calls - warm,
               "offgrid_us": _summary(off[warm:]), "grid_us": _summary(grid[warm:])}
        if offgrid == "async":
            st = rt.offgrid_stats()
            out["grid_while_computing_us"] = _summary(grid_during[warm // 4:])
            out["live_ms"] = {"p50": round(st["live_ms_p50"], 3), "p99": round(st["live_ms_p99"], 3)}
            out["counters"] = {k: st[k] for k in ("requests", "published", "superseded", "failures")}
        return out
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
    bundles = {"digits": args.digits_bundle, "resnet34": r34}
    res = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
           "command": "python benchmarks/bench_offgrid_set_mode.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "goal": "off-grid set_mode p99 ≤ 50 µs, grid p99 ≤ 10 µs",
           "runs": [measure(b, args.calls, offgrid=pol) for pol in ("sync", "async") for b in bundles.values()]}
    for run in res["runs"]:
        run["model"] = next(k for k, b in bundles.items() if str(b) == run["bundle"])
    atomic_write_json(args.out_dir / "offgrid_set_mode.json", res)
    lines = ["# set_mode cost: grid vs off-grid λ, synchronous and asynchronous off-grid policy", "",
             f"Created {res['created']}. Command: `{res['command']}`. {args.calls} calls of each kind per model and "
             "policy, alternating an off-grid λ (a fresh uniform value every time) with the grid λ 1.0 across the "
             "widths; µs on the caller's thread (`time.perf_counter_ns` around the call).", "",
             "- `sync` (default): the exact FiLM vector is computed inside `set_mode`.",
             "- `async` (`Runtime(offgrid=\"async\")`): `set_mode` queues the request; a worker thread computes the "
             "same vector and publishes it; frames in between run in the previous mode. *live* is set_mode → "
             "published on the worker's clock.", "",
             "| model | policy | kind | p50 | p90 | p99 | goal | verdict |", "|---|---|---|---:|---:|---:|---|---|"]
    for m in res["runs"]:
        kinds = [("grid", "grid_us", 10), ("off-grid", "offgrid_us", 50)]
        if m["policy"] == "async":
            kinds.append(("grid, right after an off-grid request (worker busy)", "grid_while_computing_us", 10))
        for label, key, goal in kinds:
            s = m[key]
            verdict = "MET" if s["p99"] <= goal else "MISSED"
            lines.append(f"| {m['model']} | {m['policy']} | {label} | {s['p50']} | {s['p90']} | {s['p99']} | "
                         f"p99 ≤ {goal} µs | {verdict} |")
    lines += ["", "Asynchronous off-grid requests: set_mode → live (ms) and counters", "",
              "| model | live p50 ms | live p99 ms | requests | published | superseded |", "|---|---:|---:|---:|---:|---:|"]
    for m in res["runs"]:
        if m["policy"] == "async":
            c = m["counters"]
            lines.append(f"| {m['model']} | {m['live_ms']['p50']} | {m['live_ms']['p99']} | {c['requests']} | "
                         f"{c['published']} | {c['superseded']} |")
    atomic_write_text(args.out_dir / "offgrid_set_mode.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
