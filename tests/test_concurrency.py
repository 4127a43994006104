"""set_mode from a control thread while other threads infer: every frame must run wholly in one
mode. 10,000 frames against a control thread switching at random among grid, baked and off-grid
modes (off-grid ones recompute a FiLM ring buffer on every switch); each frame's logits are
compared with the precomputed logits of every mode for that input."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from oat_edge.runtime import Runtime

from runtime_support import BAKED, WIDTHS, bundle_path, impl_params, sample_images

FRAMES = 10_000
INFER_THREADS = 2
MATCH_TOL = 1e-5
DEADLINE_S = 600.0  # how long a test waits for the events it needs (switches, bakes, publishes)
LAMS = (0.0, 0.1, 0.25, BAKED[0], 1.0, 0.0123, 0.123, 0.333, 0.456, 0.777, 0.987)  # grid, baked, off-grid
MODES = [(lam, w) for lam in LAMS for w in WIDTHS]


def mode_logits(rt, images) -> np.ndarray:
    """Logits [mode, image, class] of every mode of MODES for each image, one image per call."""
    expected = np.empty((len(MODES), len(images), 10), np.float32)
    for i, m in enumerate(MODES):
        rt.set_mode(*m)
        for k in range(len(images)):
            expected[i, k] = rt.infer(images[k:k + 1])[0]
    return expected


def switch_while_inferring(rt, images, frames: int, seed: int, hold_s: float = 0.0, until=None, modes=MODES):
    """INFER_THREADS threads infer at least ``frames`` frames in all while a control thread
    switches at random among MODES (holding each up to ``hold_s`` seconds), and go on until
    ``until(state)`` holds (state: {"switches": n, "seen": reported modes}) or DEADLINE_S
    passes: the test waits for the events it needs instead of assuming how fast this machine
    is. Returns the frames as (image index, logits, reported mode) and the number of switches;
    ``modes`` of three entries (λ, width, precision) get the precision reported too."""
    stop = threading.Event()
    results = [[] for _ in range(INFER_THREADS)]
    state = {"switches": 0, "seen": set()}
    deadline = time.monotonic() + DEADLINE_S

    def control():
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            rt.set_mode(*modes[int(rng.integers(len(modes)))])
            state["switches"] += 1
            if hold_s:
                stop.wait(float(rng.uniform(0, hold_s)))

    def perceive(t):
        f = 0
        while f < frames // INFER_THREADS or (until is not None and not until(state) and time.monotonic() < deadline):
            k = (f * 7 + t) % len(images)
            logits, mode = rt.infer_with_mode(images[k:k + 1])
            reported = (mode.lam, mode.width, mode.precision)[:len(modes[0])]
            results[t].append((k, logits[0], reported))
            state["seen"].add(reported)
            f += 1

    ctl = threading.Thread(target=control)
    workers = [threading.Thread(target=perceive, args=(t,)) for t in range(INFER_THREADS)]
    ctl.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    ctl.join()
    return [r for rs in results for r in rs], state["switches"]


@pytest.mark.slow
@pytest.mark.parametrize("ring_slots", [16, 3])  # 3: the writer must often wait for a pinned slot
@pytest.mark.parametrize("impl", impl_params())
def test_every_frame_runs_in_exactly_one_mode(impl, ring_slots):
    rt = Runtime(bundle_path(), backend="onnxruntime", impl=impl, ring_slots=ring_slots, threads=1)
    images = sample_images(8, seed=4)
    expected = mode_logits(rt, images)
    for k in range(len(images)):  # the check is only meaningful if modes are told apart
        d = np.abs(expected[:, None, k] - expected[None, :, k]).max(axis=2)
        assert d[~np.eye(len(MODES), dtype=bool)].min() > 100 * MATCH_TOL

    enough = lambda st: st["switches"] > 100 and len(st["seen"]) > len(MODES) // 2  # noqa: E731
    frames, n_switches = switch_while_inferring(rt, images, FRAMES, seed=0, until=enough)

    index = {m: i for i, m in enumerate(MODES)}
    no_mode, wrong_report, seen = 0, 0, set()
    for k, y, reported in frames:
        dist = np.abs(expected[:, k] - y).max(axis=1)
        if dist.min() > MATCH_TOL:
            no_mode += 1
        elif dist[index[reported]] > MATCH_TOL:
            wrong_report += 1
        seen.add(reported)
    print(f"{impl}, ring {ring_slots}: {len(frames)} frames, {n_switches} switches, {len(seen)} modes seen, "
          f"{no_mode} frames matching no mode, {wrong_report} reported with the wrong mode")
    assert len(frames) >= FRAMES
    assert n_switches > 100 and len(seen) > len(MODES) // 2  # the modes really changed under the frames
    assert no_mode == 0
    assert wrong_report == 0
    assert all(rt._modes.reg.pins(s) == 0 for s in range(ring_slots))


@pytest.mark.parametrize("impl,offgrid", [pytest.param(*p.values, "sync", marks=p.marks, id=f"{p.id}-sync")
                                          for p in impl_params()] + [pytest.param("auto", "async", id="auto-async")])
def test_frames_stay_in_one_mode_while_bakes_swap_sessions(impl, offgrid):
    """Background baking on, a small cache (capacity 4 of 33 modes): the worker bakes, swaps in
    and evicts sessions while frames run. Every frame must still match exactly the mode it
    reports (baked sessions pass parity, so they agree with the FiLM path to float rounding).
    With offgrid="async" a second worker publishes off-grid modes late (or drops them when
    overtaken) under the same frames."""
    from oat_edge.runtime.bakery import BakeConfig

    frames = 40
    rt = Runtime(bundle_path(), backend="onnxruntime", impl=impl, threads=1, bake=BakeConfig(capacity=4),
                 offgrid=offgrid)
    images = sample_images(8, seed=4)
    ref = Runtime(bundle_path(), backend="onnxruntime", impl=impl, threads=1)  # FiLM path only
    expected = mode_logits(ref, images)
    ref.close()

    def enough(_state):  # swaps really happen, and off-grid modes really publish late
        st = rt.bake_stats()
        if not (st["bakes"] >= 5 and st["evictions"] >= 1):
            return False
        return offgrid != "async" or rt.offgrid_stats()["published"] >= 10

    # Modes held up to 20 ms, long enough for bakes to land.
    results, n_switches = switch_while_inferring(rt, images, frames, seed=1, hold_s=0.02, until=enough)
    stats = rt.bake_stats()
    offgrid_stats = rt.offgrid_stats()
    rt.close()

    index = {m: i for i, m in enumerate(MODES)}
    bad = 0
    for k, y, reported in results:
        if np.abs(expected[index[reported], k] - y).max() > MATCH_TOL:
            bad += 1
    print(f"{impl}, {offgrid}: {frames} frames, {n_switches} switches, bake stats {stats}, off-grid {offgrid_stats}")
    assert len(results) >= frames
    assert bad == 0
    assert stats["bake_failures"] == 0 and stats["bakes"] >= 5 and stats["evictions"] >= 1  # swaps really happened
    if offgrid == "async":
        assert offgrid_stats["published"] >= 10 and offgrid_stats["failures"] == 0


def test_frames_run_in_the_precision_they_report_while_bakes_swap_sessions():
    """fp32, fp16 and int8 modes of one (λ, width) under background baking (fp32 bakes, the
    reduced-precision ones are not bakeable here): a frame must never get another precision's
    baked graph. Matched within the bake parity tolerance; the modes differ by far more."""
    from oat_edge.runtime.bakery import BakeConfig

    from runtime_support import precision_bundle_path

    modes = [(lam, 1.0, p) for lam in (0.0, 0.3, 0.333, 1.0) for p in ("fp32", "fp16", "int8")]
    tol = 1e-4
    images = sample_images(8, seed=4)
    ref = Runtime(precision_bundle_path(), backend="onnxruntime", threads=1)
    expected = np.empty((len(modes), len(images), 10), np.float32)
    for i, m in enumerate(modes):
        ref.set_mode(*m)
        expected[i] = ref.infer(images)
    ref.close()
    for k in range(len(images)):
        d = np.abs(expected[:, None, k] - expected[None, :, k]).max(axis=2)
        assert d[~np.eye(len(modes), dtype=bool)].min() > 4 * tol

    rt = Runtime(precision_bundle_path(), backend="onnxruntime", threads=1, bake=BakeConfig(capacity=3))

    def enough(state):  # fp32 bakes land and every mode is seen
        return rt.bake_stats()["bakes"] >= 2 and len(state["seen"]) == len(modes)

    results, n_switches = switch_while_inferring(rt, images, 600, seed=2, hold_s=0.02, until=enough, modes=modes)
    stats = rt.bake_stats()
    rt.close()
    index = {m: i for i, m in enumerate(modes)}
    bad = sum(np.abs(expected[index[reported], k] - y).max() > tol for k, y, reported in results)
    print(f"precisions: {len(results)} frames, {n_switches} switches, bake stats {stats}")
    assert bad == 0
    assert stats["bakes"] >= 2
