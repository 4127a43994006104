"""set_mode over cached grid modes while another thread bakes, alone in its process.

The bench's ``setmode_bake`` block measures the same thing inside the benchmark process, next to
everything else the bench holds (the plain runtime, the thread-count runtimes, the eager model);
this repeats it in a process that holds only the baking runtime, so the two can be compared.
Bursts of 64 calls with 0.5 ms pauses, as a control loop would, for ``--seconds`` per repeat.

    python benchmarks/setmode_while_baking.py BUNDLE [--threads 1] [--repeats 6] [--seconds 2] [--spin-wait]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--spin-wait", action="store_true", help="onnxruntime's spin-wait on (backend_options)")
    args = ap.parse_args(argv)

    from oat_edge.bench.baking import _BackgroundBaker, bench_bake_config, set_mode_bursts
    from oat_edge.runtime import Runtime

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(args.bundle, backend="onnxruntime", threads=args.threads, bake=bench_bake_config(manifest),
                     backend_options={"spin_wait": args.spin_wait})
    widths = list(rt.widths)
    grid = [(lam, w) for w in widths for lam in (0.1, 0.3, 1.0)]
    for m in grid:
        rt.bake(*m)
    rows = []
    for rep in range(args.repeats):
        with _BackgroundBaker(rt, widths) as bg:
            out = set_mode_bursts(rt, grid, args.seconds)
        us = np.asarray(out) / 1e3
        rows.append({"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)),
                     "p999_us": float(np.percentile(us, 99.9)), "n": len(us), "bakes": bg.count})
        print(f"repeat {rep + 1}: p50 {rows[-1]['p50_us']:.2f} µs, p99 {rows[-1]['p99_us']:.2f} µs, "
              f"p99.9 {rows[-1]['p999_us']:.1f} µs over {len(us)} calls, {bg.count} bakes meanwhile", flush=True)
    rt.close()
    print(json.dumps({"bundle": str(args.bundle), "threads": args.threads, "spin_wait": args.spin_wait,
                      "repeats": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
