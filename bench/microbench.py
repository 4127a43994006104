"""Micro-measurements of the runtime's hot-path pieces (not a unit test: timings belong in
benchmark reports). ``oat-edge bench`` measures end-to-end latency; this measures the parts:

- ``set_mode`` cost per call for an on-grid λ (table row), an off-grid λ (exact FiLM computed
  into a ring buffer) and a baked mode, with the C++ extension and with the Python fallback;
- the input check of ``infer`` (one pass) against the inference it guards;
- ONNX Runtime: plain ``run`` against IOBinding with preallocated output, batch 1;
- the runtime's own overhead per inference (``rt.infer`` against the bare session).

    python -m oat_edge.bench.microbench BUNDLE [--calls 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict, List

import numpy as np


def _stats_ns(samples: List[int], overhead_ns: float = 0.0) -> Dict[str, float]:
    a = np.asarray(samples, dtype=np.float64) - overhead_ns
    return {"median_us": float(np.median(a)) / 1e3, "p99_us": float(np.percentile(a, 99)) / 1e3,
            "mean_us": float(a.mean()) / 1e3, "n": int(a.size)}


def timer_overhead_ns(n: int = 100_000) -> float:
    clock = time.perf_counter_ns
    s = []
    for _ in range(n):
        t0 = clock()
        s.append(clock() - t0)
    return float(np.median(s))


def time_calls(fn: Callable[[int], None], n: int, overhead_ns: float) -> Dict[str, float]:
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        fn(i)
        samples[i] = clock() - t0
    return _stats_ns(samples, overhead_ns)


def set_mode_costs(rt, calls: int, overhead_ns: float) -> Dict[str, Dict[str, float]]:
    """Alternating between two modes of each kind, so every call really publishes a new mode."""
    w = max(rt.widths)
    baked = [(lam, rt.widths[wi]) for lam, wi, _ in rt._baked]
    kinds = {
        "on_grid": [(0.1, w), (0.3, w)],
        "off_grid": [(0.123, w), (0.456, w)],
    }
    if len(baked) >= 2:
        kinds["baked"] = baked[:2]
    elif baked:
        kinds["baked"] = [baked[0], baked[0]]
    out = {}
    for kind, modes in kinds.items():
        for m in modes:
            rt.set_mode(*m)  # warm
        out[kind] = time_calls(lambda i, modes=modes: rt.set_mode(*modes[i & 1]), calls, overhead_ns)
        out[kind]["modes"] = [list(m) for m in modes]
    return out


def validation_cost(rt, overhead_ns: float, n: int = 20_000) -> Dict[str, Dict[str, float]]:
    out = {}
    for batch in sorted({1, rt.io.batch_max}):
        x = np.random.default_rng(0).random((batch,) + rt.input_shape, dtype=np.float32)
        out[f"check_batch{batch}"] = time_calls(lambda i, x=x: rt._checker.numpy(x), n, overhead_ns)
        out[f"range_only_batch{batch}"] = time_calls(lambda i, x=x: rt._impl.in_unit_range(x), n, overhead_ns)
    return out


def ort_binding_vs_run(rt, overhead_ns: float, n: int = 5_000) -> Dict[str, Dict[str, float]]:
    """Plain session.run against IOBinding (input bound to the numpy buffer, output preallocated)."""
    import onnxruntime as ort

    if rt.backend_name != "onnxruntime":
        return {}
    spec = next(p for p in rt._paths if p.has_film and p.width == max(rt.widths) and p.bn == "a")
    sess = rt.backend._sessions[spec.index]
    x = np.random.default_rng(0).random((1,) + rt.input_shape, dtype=np.float32)
    film = rt.film_vector(0.3, spec.width)
    io = rt.io
    out_buf = np.empty((1, rt.num_classes), np.float32)
    binding = sess.io_binding()
    binding.bind_cpu_input(io.images, x)
    binding.bind_cpu_input(io.film, film)
    binding.bind_output(io.logits, "cpu", 0, np.float32, list(out_buf.shape), out_buf.ctypes.data)
    run_opts = ort.RunOptions()

    def plain(i):
        sess.run([io.logits], {io.images: x, io.film: film})

    def bound(i):
        sess.run_with_iobinding(binding, run_opts)

    res = {}
    for _ in range(2):  # interleave rounds: machines drift
        for name, fn in (("run", plain), ("iobinding", bound)):
            fn(0)
            r = time_calls(fn, n, overhead_ns)
            res.setdefault(name, []).append(r)
    return {k: min(v, key=lambda r: r["median_us"]) for k, v in res.items()}


def runtime_overhead(rt, overhead_ns: float, n: int = 5_000) -> Dict[str, Dict[str, float]]:
    if rt.backend_name != "onnxruntime":
        return {}
    w = max(rt.widths)
    rt.set_mode(0.3, w)
    spec = next(p for p in rt._paths if p.has_film and p.width == w and p.bn == "a")
    sess = rt.backend._sessions[spec.index]
    x = np.random.default_rng(0).random((1,) + rt.input_shape, dtype=np.float32)
    film = rt.film_vector(0.3, w)
    io = rt.io
    res = {}
    for _ in range(2):
        for name, fn in (("session_run", lambda i: sess.run([io.logits], {io.images: x, io.film: film})),
                         ("rt_infer", lambda i: rt.infer(x))):
            fn(0)
            res.setdefault(name, []).append(time_calls(fn, n, overhead_ns))
    return {k: min(v, key=lambda r: r["median_us"]) for k, v in res.items()}


def run(bundle: str, calls: int = 100_000, backend: str = "onnxruntime", threads=None) -> dict:
    from oat_edge.runtime import Runtime, extension_available

    overhead = timer_overhead_ns()
    result = {"bundle": bundle, "calls": calls, "timer_overhead_ns": overhead, "set_mode": {}, "validation": {}}
    impls = ["python"] + (["ext"] if extension_available() else [])
    for impl in impls:
        rt = Runtime(bundle, backend=backend, threads=threads, impl=impl)
        result["set_mode"][impl] = set_mode_costs(rt, calls, overhead)
        result["validation"][impl] = validation_cost(rt, overhead)
        if impl == impls[-1]:
            result["device_key"] = rt.device_key
            result["ort_run_vs_iobinding_batch1"] = ort_binding_vs_run(rt, overhead)
            result["infer_overhead_batch1"] = runtime_overhead(rt, overhead)
        rt.close()
    return result


def _print(result: dict) -> None:
    print(f"timer overhead {result['timer_overhead_ns']:.0f} ns (subtracted)")
    for impl, kinds in result["set_mode"].items():
        for kind, s in kinds.items():
            print(f"set_mode {impl:6s} {kind:9s} median {s['median_us']:7.3f} µs  p99 {s['p99_us']:7.3f} µs  (n={s['n']})")
    for impl, checks in result["validation"].items():
        for name, s in checks.items():
            print(f"input check {impl:6s} {name:22s} median {s['median_us']:7.3f} µs  p99 {s['p99_us']:7.3f} µs")
    for group in ("ort_run_vs_iobinding_batch1", "infer_overhead_batch1"):
        for name, s in (result.get(group) or {}).items():
            print(f"{group} {name:12s} median {s['median_us']:8.2f} µs  p99 {s['p99_us']:8.2f} µs")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--calls", type=int, default=100_000, help="set_mode calls per kind (default 100000)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    result = run(args.bundle, args.calls, threads=args.threads)
    _print(result)
    if args.json:
        from oat_edge.fileio import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
