"""Background baking in the benchmark (``oat-edge bench --bake``): a second Runtime with
``bake=True`` beside the plain one, measured in the same interleaved rounds.

Blocks (each a variant of the interleaved schedule):
- ``held|λ|w|b``: a mode baked at run time (``Runtime.baked_onnx``: the BN path folded now)
  against the bundle's baked export of the *same* mode and, as the control, a second session of
  that export, all three as the bare session call — the steady state of a held mode once its bake
  landed vs a baked export. The three run in one block, in rotating chunks of a few ms (``paired_chunks``):
  the host's speed drifts over seconds, and timing each in its own block put two sessions of one
  file up to 24 % apart. Their sessions have ONNX Runtime's spin-wait off, as all of oat-edge's
  (oat_edge.onnxrt.session_options): with it on, the pool of the session that just ran keeps
  spinning and slows whichever session comes next (threads > 1; benchmarks/results/spin_wait.md);
- ``heldrt|w|b``: ``Runtime.infer`` in an off-grid mode held long enough to be baked (the cache
  lookup included), for the report next to the plain runtime's exported baked mode;
- ``transition``: ``set_mode`` to a mode never seen (a fresh off-grid λ) until it runs baked;
- ``setmode_bake``: ``set_mode`` over grid modes (cached) while another thread bakes;
- ``interfere|b``: ``Runtime.infer`` in a held baked mode while another thread bakes.
``footprint`` (not a block): RSS of a fresh process with the bundle alone and with K baked modes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from oat_edge.bench.scheduling import Block, timed_calls
from oat_edge.bench.stats import ms_summary, ratio, us_summary
from oat_edge.mode import Mode

TRANSITION_TIMEOUT_S = 30.0


class _Fresh:
    """Off-grid λ never used before (a new cache key each time), cycling over the widths."""

    def __init__(self, widths, start: float = 0.6):
        self.widths = list(widths)
        self.k = 0
        self.start = start

    def __call__(self) -> Mode:
        self.k += 1
        return Mode(self.start + 1e-5 * self.k + 1.234e-7, self.widths[self.k % len(self.widths)])


class _BackgroundBaker:
    """Bakes fresh modes on another thread while a block measures (interference)."""

    def __init__(self, rtb, widths):
        self.rtb, self.fresh = rtb, _Fresh(widths, start=0.2)
        self.stop = threading.Event()
        self.count = 0

    def __enter__(self):
        def loop():
            while not self.stop.is_set():
                m = self.fresh()
                self.rtb.bake(m.lam, m.width)
                self.count += 1

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


PAIRED_CHUNK_S = 0.005  # a chunk: one untimed call, then timed calls for this long (at least 2)


def _held_comparison(rtb, mode, path_id: str) -> Dict[str, Callable]:
    """{"held", "exported", "copy"}: mode's graph baked now from its BN path, the bundle's baked
    export of it (path ``path_id``) and a second session of that export, each a fresh session
    opened by the backend with the runtime's settings, called bare."""
    held = rtb.backend.open_baked(rtb.baked_onnx(mode.lam, mode.width), f"{mode} baked now", path_id)
    return {"held": held, "exported": rtb.backend.open_naive(path_id), "copy": rtb.backend.open_naive(path_id)}


def paired_chunks(fns: Dict[str, Callable], x, duration_s: float, chunk_s: float = PAIRED_CHUNK_S,
                  min_turns: int = 4) -> Dict[str, List[int]]:
    """Time every ``fns[k](x)`` for about ``duration_s`` in all (and at least ``min_turns`` turns),
    in rotating chunks: forwards, then backwards (A B C C B A ...). A chunk is one untimed call
    (the previous variant evicted the caches) and then timed calls for ``chunk_s``, at least 2;
    a variant whose calls outlast ``chunk_s`` gets one timed call per chunk instead, as its
    caches do not survive a call anyway and more turns average the host's drift better. Drift of
    the host over the block then lands on every variant alike, which one block per variant
    cannot promise."""
    clock = time.perf_counter_ns
    keys = list(fns)
    out: Dict[str, List[int]] = {k: [] for k in keys}
    deadline = clock() + int(duration_s * 1e9)
    chunk_ns = int(chunk_s * 1e9)
    turn = 0
    while turn < min_turns or clock() < deadline:
        for k in (keys if turn % 2 == 0 else keys[::-1]):
            f, samples = fns[k], out[k]
            slow = bool(samples) and min(samples[-2:]) >= chunk_ns
            if not slow:
                f(x)
            end = clock() + chunk_ns
            n = 0
            while True:
                t0 = clock()
                f(x)
                t1 = clock()
                samples.append(t1 - t0)
                n += 1
                if slow or (n >= 2 and t1 >= end):
                    break
        turn += 1
    return out


def set_mode_bursts(rt, modes, seconds: float, done: Callable[[int], bool] = lambda n: True,
                    burst: int = 64, pause_s: float = 0.0005) -> List[int]:
    """ns per ``rt.set_mode`` cycling over ``modes`` ((λ, width) pairs) for ``seconds`` and
    until ``done(calls)``, in bursts of ``burst`` calls with ``pause_s`` pauses between them, as a
    control loop would switch (and so another thread gets the interpreter in between)."""
    clock = time.perf_counter_ns
    out: List[int] = []
    deadline = clock() + int(seconds * 1e9)
    i = 0
    while True:
        lam, width = modes[i % len(modes)]
        t0 = clock()
        rt.set_mode(lam, width)
        t1 = clock()
        out.append(t1 - t0)
        i += 1
        if t1 >= deadline and done(i):
            return out
        if i % burst == 0:
            time.sleep(pause_s)


def baking_blocks(rt, rtb, modes, batches, images) -> List[Block]:
    blocks: List[Block] = []
    widths = sorted({m.width for m in modes}) or list(rt.widths)
    for m in modes:
        pid = rt.path_for(m.lam, m.width)
        if rt.backend.path(pid).kind != "baked":
            continue
        fns = _held_comparison(rtb, m, pid)
        for b in batches:
            blocks.append(Block(f"held|{m.lam:g}|{m.width:g}|{b}",
                                lambda d, x=images[b], fns=fns: paired_chunks(fns, x, d),
                                {"kind": "bake_held", "lam": m.lam, "width": m.width, "batch": b}))
    held = {w: Mode(0.5 + 1.234e-7, w) for w in widths}  # off the grid: only baking makes it fast
    for w, m in held.items():
        rtb.set_mode(m.lam, m.width)
        rtb.wait_baked(m.lam, m.width, TRANSITION_TIMEOUT_S)
    for w, m in held.items():
        for b in batches:
            x = images[b]

            def run(d, m=m, x=x):
                rtb.set_mode(m.lam, m.width)
                rtb.wait_baked(m.lam, m.width, TRANSITION_TIMEOUT_S)
                return {"latency": timed_calls(lambda: rtb.infer(x), d)}

            blocks.append(Block(f"heldrt|{w:g}|{b}", run, {"kind": "bake_heldrt", "lam": m.lam, "width": w,
                                                           "batch": b}))

    fresh = _Fresh(widths)

    def transition(d):
        clock = time.perf_counter_ns
        out: List[int] = []
        deadline = clock() + int(d * 1e9)
        while True:
            m = fresh()
            t0 = clock()
            rtb.set_mode(m.lam, m.width)
            ok = rtb.wait_baked(m.lam, m.width, TRANSITION_TIMEOUT_S)
            t1 = clock()
            if ok:
                out.append(t1 - t0)
            if t1 >= deadline and len(out) >= 3:
                return {"transition": out}

    blocks.append(Block("transition", transition, {"kind": "bake_transition"}))

    grid = [Mode(lam, w) for w in widths for lam in (0.1, 0.3, 1.0)]
    grid_pairs = [(m.lam, m.width) for m in grid]
    for m in grid:
        rtb.bake(m.lam, m.width)

    def setmode_bake(d):
        with _BackgroundBaker(rtb, widths) as bg:
            return {"set_mode": set_mode_bursts(rtb, grid_pairs, d, done=lambda n: n >= 200 and bg.count >= 1)}

    blocks.append(Block("setmode_bake", setmode_bake, {"kind": "bake_setmode"}))

    m0 = held[max(widths)]
    for b in batches[:1]:
        x = images[b]

        def interfere(d, x=x):
            rtb.set_mode(m0.lam, m0.width)
            rtb.wait_baked(m0.lam, m0.width, TRANSITION_TIMEOUT_S)
            with _BackgroundBaker(rtb, widths):
                return {"latency": timed_calls(lambda: rtb.infer(x), d)}

        blocks.append(Block(f"interfere|{b}", interfere, {"kind": "bake_interfere", "lam": m0.lam,
                                                          "width": m0.width, "batch": b}))
    return blocks


# Both RSS probes start alike: a fresh interpreter, a Runtime on the bundle, one frame per width.
_RSS_PRELUDE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
from oat_edge.runtime import Runtime
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
cfg = json.loads(sys.argv[1])
ks = cfg["ks"]
bake = False
if cfg.get("bake"):
    from oat_edge.runtime.bakery import BakeConfig
    bake = BakeConfig(capacity=max(ks))
rt = Runtime(cfg["bundle"], backend="onnxruntime", threads=cfg["threads"], bake=bake)
x = np.random.default_rng(0).random((1,) + tuple(cfg["input_shape"]), dtype=np.float32)
for w in rt.widths:
    rt.set_mode(0.3, w); rt.infer(x)
"""

_RSS_SCRIPT = _RSS_PRELUDE + r"""
rt.set_mode(0.3, max(rt.widths)); rt.wait_baked(0.3, max(rt.widths), 60)
out = {}
lams = [0.6 + 0.01 * i + 1.234e-7 for i in range(max(ks))]
for k in range(1, max(ks) + 1):
    w = rt.widths[k % len(rt.widths)]
    rt.bake(lams[k - 1], w); rt.set_mode(lams[k - 1], w); rt.infer(x)
    if k in ks:
        out[str(k)] = rss()
print("BAKERSS " + json.dumps({"by_k_mb": out, "bake_stats": rt.bake_stats()}))
"""

_RSS_ALONE = _RSS_PRELUDE + r"""
print("BAKERSS " + json.dumps({"rss_mb": rss()}))
"""


def _subprocess(script: str, cfg: dict) -> dict:
    try:
        p = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], capture_output=True, text=True,
                           timeout=600)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    for line in p.stdout.splitlines():
        if line.startswith("BAKERSS "):
            return json.loads(line[len("BAKERSS "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
    return {"error": tail[0][:300]}


def bake_footprint(bundle, threads: int, input_shape, ks=(1, 4, 8)) -> dict:
    """RSS (MiB) of a fresh process holding the runtime alone (every width run once), and of one
    with background baking after K modes were baked (K in ``ks``)."""
    cfg = {"bundle": str(bundle), "threads": threads, "input_shape": list(input_shape), "ks": list(ks)}
    alone = _subprocess(_RSS_ALONE, cfg)
    baked = _subprocess(_RSS_SCRIPT, dict(cfg, bake=True))
    out = {"bundle_alone_rss_mb": alone.get("rss_mb"), "baked_rss_mb": baked.get("by_k_mb"),
           "errors": [e for e in (alone.get("error"), baked.get("error")) if e]}
    if out["bundle_alone_rss_mb"] and out["baked_rss_mb"]:
        out["extra_mb_per_k"] = {k: v - out["bundle_alone_rss_mb"] for k, v in out["baked_rss_mb"].items()}
    return out


def bench_bake_config(manifest: dict):
    """The baking runtime's cache for the bench: room for every mode the blocks hold at once
    (the set_mode grid, 3 λ per width, and one held mode per width) plus the fresh modes baked
    around them, so ``setmode_bake`` measures switches to cached modes as it says. The default
    budget (256 MB) holds only about three ResNet-34 width-1 modes: there those switches were
    cache misses, i.e. bake requests."""
    from oat_edge.runtime.bakery import DEFAULT_MEMORY_MB, BakeConfig

    biggest = max([int(e.get("bytes") or 0) for e in manifest.get("paths", [])] + [0])
    held = 4 * len(manifest["model"]["widths"]) + 4
    return BakeConfig(capacity=64, memory_mb=max(DEFAULT_MEMORY_MB, round(held * biggest / 2**20)))


def summarize(blocks, stats, rtb, footprint: Optional[dict], switch: dict) -> dict:
    """The ``baking`` section of the results."""
    by_kind: Dict[str, list] = {}
    for b in blocks:
        if b.meta.get("kind", "").startswith("bake_"):
            by_kind.setdefault(b.meta["kind"], []).append(b)
    held = []
    for b in by_kind.get("bake_held", []):
        m = b.meta
        hs, ex, cp = (stats[b.key][k] for k in ("held", "exported", "copy"))
        held.append({"lam": m["lam"], "width": m["width"], "batch": m["batch"], "runtime_baked_p50_ms": hs["p50_ms"],
                     "exported_baked_p50_ms": ex["p50_ms"], "runtime_over_exported": ratio(hs["p50_ms"], ex["p50_ms"]),
                     "runtime_baked_p99_ms": hs["p99_ms"], "exported_baked_p99_ms": ex["p99_ms"],
                     "copy_p50_ms": cp["p50_ms"], "copy_over_exported": ratio(cp["p50_ms"], ex["p50_ms"])})
    heldrt = [{"lam": b.meta["lam"], "width": b.meta["width"], "batch": b.meta["batch"],
               **ms_summary(stats[b.key]["latency"])} for b in by_kind.get("bake_heldrt", [])]
    out = {"held_vs_exported": held, "held_runtime_infer": heldrt}
    if "transition" in stats:
        out["transition_ms"] = ms_summary(stats["transition"]["transition"])
    if "setmode_bake" in stats:
        out["set_mode_during_bake_us"] = us_summary(stats["setmode_bake"]["set_mode"])
    out["set_mode_idle_us"] = switch.get("set_mode_us")
    interf = []
    for b in by_kind.get("bake_interfere", []):
        s = stats[b.key]["latency"]
        quiet = next((r for r in heldrt if r["batch"] == b.meta["batch"] and r["width"] == b.meta["width"]), None)
        interf.append({"lam": b.meta["lam"], "width": b.meta["width"], "batch": b.meta["batch"],
                       "during_bake": ms_summary(s), "quiet_p50_ms": quiet["p50_ms"] if quiet else None,
                       "quiet_p99_ms": quiet["p99_ms"] if quiet else None,
                       "p50_ratio": ratio(s["p50_ms"], quiet["p50_ms"] if quiet else None),
                       "p99_ratio": ratio(s["p99_ms"], quiet["p99_ms"] if quiet else None)})
    out["interference"] = interf
    out["memory"] = footprint
    out["stats"] = rtb.bake_stats()
    out["config"] = {"capacity": out["stats"]["capacity"], "memory_mb": out["stats"]["memory_mb"]}
    return out
