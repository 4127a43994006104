"""set_mode's tail next to another busy thread (why set_mode's p99 moves while a bake runs).

Times ``Runtime.set_mode`` over grid modes, in bursts of 64 calls with 0.5 ms pauses (as the
bench's set_mode-while-baking block), while a second thread is: absent; running Python bytecode
(holds the interpreter lock); running numpy matrix products (releases it); sleeping in a loop.

    python benchmarks/setmode_contention.py BUNDLE [--repeats 2] [--seconds 2]
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings

import numpy as np


def _python_busy(stop):
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i


def _numpy_busy(stop):
    a = np.random.default_rng(0).random((300, 300))
    while not stop.is_set():
        a @ a


def _sleeping(stop):
    while not stop.is_set():
        time.sleep(0.0001)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    from oat_edge.bench.baking import set_mode_bursts
    from oat_edge.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(args.bundle, backend="onnxruntime", threads=1)
    grid = [(lam, w) for w in rt.widths for lam in (0.1, 0.3, 1.0)]
    for rep in range(args.repeats):
        for label, busy in (("nothing else", None), ("a thread running Python bytecode", _python_busy),
                            ("a thread in numpy matmul (releases the lock)", _numpy_busy),
                            ("a thread sleeping in a loop", _sleeping)):
            stop = threading.Event()
            thread = threading.Thread(target=busy, args=(stop,), daemon=True) if busy else None
            if thread:
                thread.start()
            out = set_mode_bursts(rt, grid, args.seconds)
            stop.set()
            if thread:
                thread.join()
            us = np.asarray(out) / 1e3
            print(f"repeat {rep + 1}, {label}: p50 {np.median(us):.2f} µs, p99 {np.percentile(us, 99):.2f} µs, "
                  f"p99.9 {np.percentile(us, 99.9):.1f} µs", flush=True)
    rt.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
