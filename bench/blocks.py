"""The blocks one benchmark measures: the runtime per (mode, batch), FiLM-as-input against baked
paths, the mode switch, the naive switch (a new session per change), Runtime load, and PyTorch
eager of the conditional model. Each is built from the public Runtime / Runner API only."""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from oat_edge.bench.scheduling import MIN_ITERS, Block, timed_calls
from oat_edge.bundle.names import path_id
from oat_edge.errors import ConfigError
from oat_edge.mode import Mode, same_lambda, same_width


def active_path(rt, mode: Mode) -> tuple:
    """(path id, "film" | "baked") that ``Runtime.infer`` runs for ``mode`` (asked of the runtime)."""
    pid = rt.path_for(mode.lam, mode.width, mode.precision)
    return pid, rt.backend.path(pid).kind

def film_path_id(mode: Mode) -> str:
    """The generic BN path of a mode's width and precision (the one fed a FiLM vector)."""
    return path_id(mode.bn, mode.width, mode.precision)

def _psuffix(mode: Mode) -> str:
    """Block keys of fp32 modes stay as they were; other precisions add theirs."""
    return "" if mode.precision == "fp32" else f"|{mode.precision}"


def sample_images(batch: int, input_shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + batch).random((batch,) + tuple(input_shape), dtype=np.float32)

def _film_vector(rt, mode: Mode) -> np.ndarray:
    """The flat FiLM vector the runtime feeds for ``mode`` (computed by the runtime, not here)."""
    return np.ascontiguousarray(rt.film_vector(mode.lam, mode.width), dtype=np.float32)

def _naive_call(handle, images: np.ndarray, film: Optional[np.ndarray]):
    """Run one inference on what ``backend.open_naive`` returned."""
    return handle(images, film=film)

def _switch_order(modes: Sequence[Mode]) -> List[Mode]:
    """Modes in an order where consecutive entries run different paths when the bundle allows it
    (alternate widths), so every switch in the cycle really changes the active path."""
    by_width: Dict[float, List[Mode]] = {}
    for m in modes:
        by_width.setdefault(m.width, []).append(m)
    order: List[Mode] = []
    queues = [list(v) for _, v in sorted(by_width.items())]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order

def runtime_blocks(rt, modes, batches, images, kind: str = "runtime", **meta) -> List[Block]:
    """``Runtime.infer`` per mode and batch. ``kind`` and ``meta`` tag the blocks (the thread
    tuning measures the same calls on runtimes with other thread counts)."""
    tag = "".join(f"|{k}{v}" for k, v in meta.items())
    blocks = []
    for b in batches:
        x = images[b]
        for m in modes:
            pid, path_kind = active_path(rt, m)

            def run(d, m=m, x=x):
                rt.set_mode(m.lam, m.width, m.precision)
                return {"latency": timed_calls(lambda: rt.infer(x), d)}

            blocks.append(Block(f"{kind}{tag}|{m.lam:g}|{m.width:g}|{b}{_psuffix(m)}", run,
                                {"kind": kind, "lam": m.lam, "width": m.width, "batch": b,
                                 "path": path_kind, "path_id": pid, "precision": m.precision, **meta}))
    return blocks

def film_vs_baked_blocks(rt, modes, batches, images) -> List[Block]:
    """For every mode with a baked path: the same mode through the FiLM-as-input path and
    through the baked path, both via ``backend.infer_path`` (same entry point, fair ratio)."""
    blocks = []
    for m in modes:
        baked_id, kind = active_path(rt, m)
        if kind != "baked":
            continue
        vec = _film_vector(rt, m)
        for b in batches:
            x = images[b]
            for path, pid, film in (("film", film_path_id(m), vec), ("baked", baked_id, None)):
                def run(d, pid=pid, x=x, film=film):
                    return {"latency": timed_calls(lambda: rt.backend.infer_path(pid, x, film=film), d)}

                blocks.append(Block(f"path|{path}|{m.lam:g}|{m.width:g}|{b}{_psuffix(m)}", run,
                                    {"kind": "path", "path": path, "path_id": pid, "lam": m.lam,
                                     "width": m.width, "batch": b, "precision": m.precision}))
    return blocks

def on_film_grid(rt, mode: Mode) -> bool:
    """Whether set_mode to ``mode`` is a lookup (baked path, or λ on the FiLM table grid of the
    manifest) rather than an exact FiLM computation for an off-grid λ."""
    grid = (rt.manifest.get("film") or {}).get("grid") or []
    return active_path(rt, mode)[1] == "baked" or any(same_lambda(g, mode.lam) for g in grid)

def switch_block(rt, modes, batch, images) -> Block:
    """set_mode alone (tight loop over the mode cycle; switches to grid/baked modes and to
    off-grid λ, which compute a FiLM vector, kept apart), then set_mode + the first inference
    after it against a steady-state inference of the same mode."""
    cycle = _switch_order(modes)
    on_grid = [on_film_grid(rt, m) for m in cycle]
    x = images[batch]

    def run(d):
        clock = time.perf_counter_ns
        set_grid, set_off, switch_first, first_only, steady = [], [], [], [], []
        n = len(cycle)
        deadline = clock() + int(d * 0.3e9)
        i = 0
        while True:  # set_mode alone: µs scale, so many samples
            m = cycle[i % n]
            t0 = clock()
            rt.set_mode(m.lam, m.width)
            t1 = clock()
            (set_grid if on_grid[i % n] else set_off).append(t1 - t0)
            i += 1
            if t1 >= deadline and i >= 200:
                break
        deadline = clock() + int(d * 0.7e9)
        j = 0
        while True:
            m = cycle[(i + j) % n]
            t0 = clock()
            rt.set_mode(m.lam, m.width)
            t1 = clock()
            rt.infer(x)
            t2 = clock()
            rt.infer(x)
            t3 = clock()
            rt.infer(x)
            t4 = clock()
            switch_first.append(t2 - t0)
            first_only.append(t2 - t1)
            steady.append(t4 - t3)  # the third call in the mode: caches hold this path again
            j += 1
            if t4 >= deadline and j >= MIN_ITERS:
                break
        return {"set_mode": set_grid, "set_mode_offgrid": set_off, "set_mode_plus_first_infer": switch_first,
                "first_infer_after_switch": first_only, "steady_infer": steady}

    return Block("switch", run, {"kind": "switch", "batch": batch, "cycle": [[m.lam, m.width] for m in cycle],
                                 "offgrid": [[m.lam, m.width] for m, g in zip(cycle, on_grid) if not g]})

def naive_block(rt, modes, batch, images) -> Optional[Block]:
    """The naive switch: a new session (or engine context) for the target path on every change."""
    cycle = _switch_order(modes)
    targets = []  # the distinct paths the mode cycle runs, in switch order
    for m in cycle:
        pid = active_path(rt, m)[0]
        if pid not in [t[0] for t in targets]:
            targets.append((pid, m))
    films = {pid: (_film_vector(rt, m) if active_path(rt, m)[1] == "film" else None) for pid, m in targets}
    x = images[batch]
    try:  # a backend without the baseline says so (base Runner raises NotImplementedError)
        _naive_call(rt.backend.open_naive(targets[0][0]), x, films[targets[0][0]])
    except NotImplementedError:
        return None

    def run(d):
        clock = time.perf_counter_ns
        open_ns, open_first = [], []
        deadline = clock() + int(d * 1e9)
        k = 0
        while True:
            pid, _ = targets[k % len(targets)]
            t0 = clock()
            handle = rt.backend.open_naive(pid)
            t1 = clock()
            _naive_call(handle, x, films[pid])
            t2 = clock()
            del handle
            open_ns.append(t1 - t0)
            open_first.append(t2 - t0)
            k += 1
            if t2 >= deadline and k >= 3:
                break
        return {"naive_open": open_ns, "naive_open_plus_first_infer": open_first}

    return Block("naive", run, {"kind": "naive", "batch": batch, "path_ids": [t[0] for t in targets]},
                 warm=lambda d: run(0.0))

def load_block(bundle, backend, threads, device, providers=None) -> Block:
    from oat_edge.runtime import Runtime

    def run(d):
        t0 = time.perf_counter_ns()
        r = Runtime(bundle, backend=backend, threads=threads, device=device, providers=providers)
        t1 = time.perf_counter_ns()
        del r
        return {"load": [t1 - t0]}

    return Block("load", run, {"kind": "load"}, warm=lambda d: run(0.0))

def eager_blocks(checkpoint, rt, modes, batches, images, device) -> tuple:
    """PyTorch eager of the original conditional model — the naive deployment: FiLM generators
    and dual BN evaluated on every call, ``model(x, λ)`` at the width, under no_grad, with the
    runtime's thread count. One λ per width: the largest λ of that width among the modes."""
    import torch

    from oat_edge.checkpoint import load_model
    from oat_edge.fileio import sha256_file

    manifest = rt.manifest
    model, payload = load_model(checkpoint)
    src = manifest.get("source") or {}
    if src.get("arch") and payload["arch"] != src["arch"]:
        raise ConfigError(f"--checkpoint is a {payload['arch']!r} model but the bundle was exported from "
                          f"{src['arch']!r}; pass the checkpoint the bundle came from")
    bundle_widths = [float(w) for w in manifest["model"]["widths"]]
    missing = [w for w in bundle_widths if not any(same_width(w, mw) for mw in model.widths)]
    if missing:
        raise ConfigError(f"--checkpoint lacks widths {missing} that the bundle has")
    dev = torch.device(device if device and str(device).startswith("cuda") else "cpu")
    model = model.to(dev).eval()
    info = {"checkpoint": str(checkpoint), "arch": payload["arch"],
            "matches_bundle": sha256_file(checkpoint) == src.get("checkpoint_sha256"),
            "torch_threads": torch.get_num_threads(), "device": str(dev)}
    # One λ per width: the largest λ of that width that runs the FiLM path (the general path;
    # a baked mode would flatter the runtime), or the largest λ if every mode is baked.
    ref = {}
    for m in sorted(modes, key=lambda m: (active_path(rt, m)[1] == "film", m.lam)):
        ref[m.width] = m
    blocks = []
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for b in batches:
        x_np = images[b]
        for w, m in sorted(ref.items()):
            def call(m=m, x_np=x_np):
                # numpy in, numpy out, like Runtime.infer (host<->device copies included on CUDA)
                with torch.no_grad():
                    out = model(torch.from_numpy(x_np).to(dev), m.lam).cpu().numpy()
                sync()
                return out

            def run(d, m=m, call=call):
                model.set_width(m.width)
                return {"latency": timed_calls(call, d)}

            blocks.append(Block(f"eager|{m.lam:g}|{m.width:g}|{b}", run,
                                {"kind": "eager", "lam": m.lam, "width": m.width, "batch": b}))
    return blocks, info
