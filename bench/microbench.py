"""``oat-edge bench --micro``: the runtime's hot path, piece by piece, in the bench's interleaved
rounds (``scheduling``) and statistics (``stats``). The standard benchmark measures end-to-end
latency; this measures what a control loop pays around it:

- ``set_mode`` per kind of mode, with the C++ extension and with its Python twin: a grid λ (a
  table lookup), an off-grid λ under ``offgrid="sync"`` (the exact FiLM vector computed in the
  call, a fresh λ every call) and a baked mode;
- an off-grid ``set_mode`` under ``offgrid="async"`` (the call only queues the request; the
  worker is waited for, untimed, before the next call) and the time until the worker publishes;
- ``set_mode`` over cached grid modes while another thread bakes (``Runtime(bake=...)``), in
  bursts with pauses as a control loop switches;
- ``Runtime.infer`` at batch 1 against the bare call of the same path (the runtime's own
  overhead per inference).
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timezone
from typing import Callable, List

import numpy as np

from oat_edge.bench.scheduling import Block, run_interleaved, timed_calls
from oat_edge.bench.stats import aggregate, timer_overhead_ns, us_summary

SCHEMA = "oat-edge/bench-micro"
GRID_LAMBDAS = (0.1, 0.3, 1.0)  # λ on every bundle's FiLM grid (steps of 0.05)
WHILE_BAKING_CALLS = 200  # set_mode calls per round while baking, at least


def _fresh_offgrid(widths, seed: int) -> Callable[[], tuple]:
    """A new off-grid (λ, width) on every call: uniform λ, so no call finds a cached vector."""
    rng = np.random.default_rng(seed)
    counter = itertools.count()
    return lambda: (float(rng.uniform(0.001, 0.999)) + 1.234e-7, widths[next(counter) % len(widths)])


def _grid(widths) -> List[tuple]:
    return [(lam, w) for w in widths for lam in GRID_LAMBDAS]


def set_mode_blocks(rt, impl: str) -> List[Block]:
    """``set_mode|IMPL|grid``, ``|offgrid`` and (when the bundle has baked modes) ``|baked``."""
    widths = list(rt.widths)
    grid = itertools.cycle(_grid(widths))
    offgrid = _fresh_offgrid(widths, seed=0)
    kinds = {"grid": lambda: rt.set_mode(*next(grid)), "offgrid": lambda: rt.set_mode(*offgrid())}
    baked = [(float(e["lam"]), float(e["width"])) for e in rt.manifest.get("baked") or []]
    if baked:
        cycle = itertools.cycle((baked * 2)[:2])  # two, so every call changes mode
        kinds["baked"] = lambda: rt.set_mode(*next(cycle))
    return [Block(f"set_mode|{impl}|{kind}", lambda d, fn=fn: {"set_mode": timed_calls(fn, d)},
                  {"impl": impl, "mode": kind}) for kind, fn in kinds.items()]


def async_offgrid_block(rt) -> Block:
    offgrid = _fresh_offgrid(list(rt.widths), seed=1)
    return Block("set_mode|async|offgrid",
                 lambda d: {"set_mode": timed_calls(lambda: rt.set_mode(*offgrid()), d, after=rt.wait_mode)},
                 {"impl": rt.impl, "mode": "offgrid (async)"})


def while_baking_block(rtb) -> Block:
    from oat_edge.bench.baking import BackgroundBaker, set_mode_bursts

    widths = list(rtb.widths)
    grid = _grid(widths)
    for m in grid:
        rtb.bake(*m)

    def run(d):
        with BackgroundBaker(rtb, widths) as bg:
            return {"set_mode": set_mode_bursts(rtb, grid, d, done=lambda n: n >= WHILE_BAKING_CALLS and bg.count >= 1)}

    return Block("set_mode|while_baking|grid", run, {"impl": rtb.impl, "mode": "grid, while a bake runs"})


def infer_overhead_blocks(rt) -> List[Block]:
    """``Runtime.infer`` at batch 1 in a grid mode of the widest width, and the bare call of the
    path it runs (a session the backend opens for it, fed the same FiLM vector)."""
    w = max(rt.widths)
    rt.set_mode(0.3, w)
    pid = rt.path_for(0.3, w)
    film = None if rt.backend.path(pid).kind == "baked" else np.ascontiguousarray(rt.film_vector(0.3, w), np.float32)
    bare = rt.backend.open_naive(pid)
    x = np.random.default_rng(0).random((1,) + tuple(rt.input_shape), dtype=np.float32)

    def infer(d):
        rt.set_mode(0.3, w)
        return {"latency": timed_calls(lambda: rt.infer(x), d)}

    return [Block("infer|runtime", infer, {"what": "Runtime.infer"}),
            Block("infer|bare", lambda d: {"latency": timed_calls(lambda: bare(x, film=film), d)},
                  {"what": f"bare call of path {pid}"})]


def run_micro(bundle, *, backend: str = "onnxruntime", threads=None, warmup_s: float = 0.2, duration_s: float = 0.5,
              rounds: int = 5, progress=None) -> dict:
    """Measure the hot-path pieces (module docstring) of ``bundle``; returns the results dict."""
    from oat_edge.bench.baking import bench_bake_config
    from oat_edge.runtime import Runtime, extension_available

    started = time.time()
    impls = ["python"] + (["ext"] if extension_available() else [])
    opened = {impl: Runtime(bundle, backend=backend, threads=threads, impl=impl) for impl in impls}
    main = opened[impls[-1]]
    asynchronous = Runtime(bundle, backend=backend, threads=threads, offgrid="async")
    baking = Runtime(bundle, backend=backend, threads=threads, bake=bench_bake_config(main.manifest))
    try:
        blocks = [b for impl, rt in opened.items() for b in set_mode_blocks(rt, impl)]
        blocks += [async_offgrid_block(asynchronous), *infer_overhead_blocks(main)]
        if baking.bake_status == "on":
            blocks.append(while_baking_block(baking))
        overhead = timer_overhead_ns()
        stats = {b.key: aggregate(s) for b, s in zip(blocks, _samples(blocks, rounds, duration_s, warmup_s, progress))}
        return _assemble(main, blocks, stats, asynchronous.offgrid_stats(), overhead, started,
                         dict(backend=main.backend_name, threads=main.threads, rounds=rounds, duration_s=duration_s,
                              warmup_s=warmup_s, impls=impls, bake_status=baking.bake_status))
    finally:
        for rt in [*opened.values(), asynchronous, baking]:
            rt.close()


def _samples(blocks, rounds, duration_s, warmup_s, progress) -> list:
    raw = run_interleaved(blocks, rounds, duration_s, warmup_s, progress=progress)
    return [raw[b.key] for b in blocks]


def _assemble(rt, blocks, stats, async_stats: dict, overhead: dict, started: float, config: dict) -> dict:
    set_mode = [{**b.meta, **us_summary(stats[b.key]["set_mode"])} for b in blocks if "set_mode" in stats[b.key]]
    infer = {b.key.split("|")[1]: {**b.meta, **us_summary(stats[b.key]["latency"])}
             for b in blocks if "latency" in stats[b.key]}
    live = {k: async_stats.get(k) for k in ("live_ms_p50", "live_ms_p99", "requests", "published", "superseded",
                                             "failures")}
    return {"schema": SCHEMA, "schema_version": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(time.time() - started, 2), "bundle": str(rt.bundle_dir), "device_key": rt.device_key,
            "config": config, "timer": overhead, "set_mode": set_mode, "offgrid_async": live, "infer_b1": infer}


def print_micro(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"oat-edge bench --micro: {result['device_key']} (µs; timer p50 {result['timer']['p50_ns']:.0f} ns)")
    for col in ("call", "impl", "mode", "p50", "p90", "p99", "n"):
        t.add_column(col)
    for r in result["set_mode"]:
        t.add_row("set_mode", r["impl"], r["mode"], *(f"{r[k]:.3g}" for k in ("p50_us", "p90_us", "p99_us")), str(r["n"]))
    for key, r in result["infer_b1"].items():
        t.add_row(f"infer b1 ({key})", "", r["what"], *(f"{r[k]:.3g}" for k in ("p50_us", "p90_us", "p99_us")),
                  str(r["n"]))
    Console().print(t)
    live = result["offgrid_async"]
    if live.get("live_ms_p50") is not None:
        print(f"off-grid async: set_mode → live p50 {live['live_ms_p50']:.3g} ms, p99 {live['live_ms_p99']:.3g} ms "
              f"({live['published']} published of {live['requests']} requests)")
