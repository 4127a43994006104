"""The interleaved scheduler (docs/benchmarking.md "Method"): every measured variant is a
``Block``; one warm-up pass over all blocks, then rounds in rotated order so no variant always
runs first, last, or after the same neighbour."""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from oat_edge.errors import ConfigError

MIN_ITERS = 5  # calls per block and round, even when one call outlasts the block's duration
REWARM_CALLS = 2  # untimed calls at the start of every block: the previous block evicted caches


@dataclass
class Block:
    """One measured variant. ``run(duration_s)`` returns {metric: [ns, ...]} for one round;
    ``meta`` describes it in the results (kind, λ, width, batch, path...)."""

    key: str
    run: Callable[[float], Dict[str, List[int]]]
    meta: dict = field(default_factory=dict)
    warm: Optional[Callable[[float], None]] = None  # warm-up; defaults to run() with results dropped

def timed_calls(fn: Callable[[], object], duration_s: float, min_iters: int = MIN_ITERS,
                rewarm: int = REWARM_CALLS, after: Optional[Callable[[], object]] = None) -> List[int]:
    """Time ``fn()`` call by call for ``duration_s`` seconds (and at least ``min_iters`` calls).
    ``after()``, when given, runs untimed after every call (e.g. waiting for work the call queued)."""
    for _ in range(rewarm):
        fn()
        if after is not None:
            after()
    clock = time.perf_counter_ns
    out: List[int] = []
    deadline = clock() + int(duration_s * 1e9)
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        out.append(t1 - t0)
        if after is not None:
            after()
        if t1 >= deadline and len(out) >= min_iters:
            return out

def round_orders(n_blocks: int, rounds: int) -> List[List[int]]:
    """Block order of each round: a rotation whose start moves by ⌈n/rounds⌉ per round, so the
    starting positions spread over the whole list; odd rounds run backwards, so a block's
    neighbours differ from round to round."""
    step = max(1, math.ceil(n_blocks / max(rounds, 1)))
    orders = []
    for r in range(rounds):
        start = (r * step) % max(n_blocks, 1)
        order = list(range(start, n_blocks)) + list(range(0, start))
        orders.append(order[::-1] if r % 2 else order)
    return orders

def run_interleaved(blocks: Sequence[Block], rounds: int, duration_s: float, warmup_s: float,
                    progress=None) -> Dict[str, Dict[str, List[List[int]]]]:
    """Warm every block up, then run ``rounds`` interleaved rounds.

    Returns {block key: {metric: [samples of round 0, samples of round 1, ...]}}. The garbage
    collector is off inside a block (as in ``timeit``) and run between blocks, so a collection
    triggered by one variant is not billed to the next."""
    keys = [b.key for b in blocks]
    if len(set(keys)) != len(keys):
        raise ConfigError("block keys must be unique")
    results: Dict[str, Dict[str, List[List[int]]]] = {b.key: {} for b in blocks}
    task = progress.add_task("warm-up", total=len(blocks) * (rounds + 1)) if progress else None
    gc_was_enabled = gc.isenabled()
    # Objects alive now (torch, models, sessions) are moved out of the collector's sight: the
    # collections between blocks then scan only what the blocks allocated (ms, not 100s of ms).
    gc.collect()
    gc.freeze()
    try:
        for b in blocks:
            gc.collect()
            gc.disable()
            if b.warm is not None:
                b.warm(warmup_s)
            elif warmup_s > 0:
                b.run(warmup_s)
            gc.enable()
            if progress:
                progress.advance(task)
        for r, order in enumerate(round_orders(len(blocks), rounds)):
            if progress:
                progress.update(task, description=f"round {r + 1}/{rounds}")
            for i in order:
                b = blocks[i]
                gc.collect()
                gc.disable()
                samples = b.run(duration_s)
                gc.enable()
                for metric, values in samples.items():
                    results[b.key].setdefault(metric, []).append(list(values))
                if progress:
                    progress.advance(task)
    finally:
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()
    return results
