"""A robot's perception loop that trades accuracy, robustness and latency at run time.

A camera thread of the robot delivers frames at a fixed rate (scikit-learn digits stand in for
the camera); each frame is classified by an OAT/OATS bundle. A control thread watches a threat
signal (simulated: quiet stretches with attack episodes) and a latency budget, and switches
the model's mode (λ, width) while the perception loop keeps running — a switch costs
microseconds, no reload, and every frame runs wholly in one mode.

Mode choice:
- a calibrated bundle (`oat-edge export --calibrate`): `rt.select(min_robust_acc=..., max_latency_ms=...)`
  with the robust-accuracy floor rising with the threat;
- otherwise a fixed table: λ follows the threat level, and the width is the widest whose
  latency on this device fits the budget.

    python examples/robot_loop.py --bundle bundle/ --frames 300 --fps 30 --log run.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def threat_signal(t: float, seed: int = 0) -> float:
    """Threat level in [0, 1] at time t (s): low background noise with two attack episodes in
    every 10 s window (a detector's output would go here)."""
    phase = t % 10.0
    episode = 0.9 if 3.0 <= phase < 5.0 else (0.55 if 7.0 <= phase < 8.0 else 0.1)
    wobble = 0.05 * math.sin(2.0 * math.pi * (t + seed) / 1.7)
    return float(min(1.0, max(0.0, episode + wobble)))


def load_frames(input_shape, n: int, seed: int):
    """(images [n, C, H, W] float32 in [0, 1], labels or None): digits when the bundle takes 8×8
    grey images, else random frames of the bundle's shape."""
    rng = np.random.default_rng(seed)
    if tuple(input_shape) == (1, 8, 8):
        from sklearn.datasets import load_digits

        data = load_digits()
        idx = rng.integers(0, len(data.images), n)
        return (data.images[idx] / 16.0).astype(np.float32)[:, None], data.target[idx]
    return rng.random((n,) + tuple(input_shape), dtype=np.float32), None


class Controller(threading.Thread):
    """Sets the runtime's mode from the threat level and the latency budget, at `hz` (real time)."""

    def __init__(self, rt, budget_ms: float, clock, hz: float = 20.0, seed: int = 0):
        super().__init__(daemon=True, name="mode-control")
        self.rt, self.budget_ms, self.clock, self.period, self.seed = rt, budget_ms, clock, 1.0 / hz, seed
        self.stop_event = threading.Event()
        self.switches = 0
        self.threat = 0.0
        self.calibrated = rt.calibrated
        self._table = None if self.calibrated else self._fixed_table()

    def _fixed_table(self):
        """{λ: widest width within the budget}, λ on a 0.1 grid (no calibration available)."""
        table = {}
        for lam in np.round(np.arange(0.0, 1.01, 0.1), 2):
            fits = [w for w in self.rt.widths if self.rt.latency_ms(lam, w) <= self.budget_ms]
            table[float(lam)] = max(fits) if fits else min(self.rt.widths)
        return table

    def choose(self, threat: float):
        from oat_edge.errors import ModeError

        if self.calibrated:
            floor = 0.0 if threat < 0.3 else (0.5 * threat)  # demand more robustness as threat grows
            try:
                return self.rt.select(min_robust_acc=floor or None, max_latency_ms=self.budget_ms,
                                      prefer="robust" if threat >= 0.3 else "accurate")
            except ModeError:  # the floor is out of reach: the most robust mode within the budget
                return self.rt.select(max_latency_ms=self.budget_ms, prefer="robust")
        lam = float(np.round(threat, 1))
        from oat_edge import Mode

        return Mode(lam, self._table[lam])

    def run(self):
        current = None
        while not self.stop_event.is_set():
            self.threat = threat_signal(self.clock(), self.seed)
            mode = self.choose(self.threat)
            if mode != current:
                self.rt.set_mode(mode)
                current = mode
                self.switches += 1
            self.stop_event.wait(self.period)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle folder written by `oat-edge export`")
    parser.add_argument("--frames", type=int, default=300, help="frames to process (default 300)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate; 0 runs as fast as possible (default 30)")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime, torch or tensorrt")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="latency budget per frame (default: half the frame period, or 5 ms at --fps 0)")
    parser.add_argument("--control-hz", type=float, default=20.0, help="mode-control rate (default 20 Hz)")
    parser.add_argument("--log", default=None, metavar="FILE", help="write one JSON line per frame")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from oat_edge.runtime import Runtime

    console = Console()
    rt = Runtime(args.bundle, backend=args.backend, threads=args.threads)
    period = 1.0 / args.fps if args.fps > 0 else 0.0
    budget = args.budget_ms or (period * 1e3 / 2 if period else 5.0)
    frames, labels = load_frames(rt.input_shape, args.frames, args.seed)
    console.print(f"[bold]{rt.bundle_dir}[/]: backend {rt.backend_name} ({rt.backend_reason}), "
                  f"{'calibrated' if rt.calibrated else 'no calibration: fixed mode table'}, "
                  f"budget {budget:g} ms, {args.fps:g} fps")

    # The threat scenario runs on the stream's clock (frame index / nominal rate), so a run at
    # --fps 0 sees the same episodes as one in real time.
    frame_index = [0]
    nominal_fps = args.fps or 30.0
    control = Controller(rt, budget, lambda: frame_index[0] / nominal_fps, hz=args.control_hz, seed=args.seed)
    control.choose(0.0)  # measures path latencies once (uncalibrated table / select) before the clock runs
    control.start()
    log, misses = [], 0
    start = next_tick = time.perf_counter()
    for i in range(args.frames):
        frame_index[0] = i
        t0 = time.perf_counter()
        logits, mode = rt.infer_with_mode(frames[i:i + 1])
        ms = (time.perf_counter() - t0) * 1e3
        pred = int(logits[0].argmax())
        rec = {"frame": i, "t": round(t0 - start, 4), "threat": round(control.threat, 3), "lam": mode.lam,
               "width": mode.width, "path": rt.path_for(mode.lam, mode.width), "latency_ms": round(ms, 4),
               "prediction": pred}
        if labels is not None:
            rec["label"] = int(labels[i])
        misses += ms > budget
        log.append(rec)
        if period:
            next_tick += period
            delay = next_tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                next_tick = time.perf_counter()  # late: do not try to catch up with a burst
    control.stop_event.set()
    control.join()
    wall = time.perf_counter() - start

    by_mode = defaultdict(list)
    for r in log:
        by_mode[(r["lam"], r["width"])].append(r)
    table = Table(title=f"{len(log)} frames in {wall:.1f} s, {control.switches} mode switches, "
                        f"{misses} over the {budget:g} ms budget")
    for col in ("λ", "width", "path", "frames", "p50 ms", "p99 ms", "accuracy"):
        table.add_column(col, justify="right")
    for (lam, width), rs in sorted(by_mode.items()):
        lat = np.array([r["latency_ms"] for r in rs])
        acc = (f"{np.mean([r['prediction'] == r['label'] for r in rs]):.2f}" if labels is not None else "-")
        table.add_row(f"{lam:g}", f"{width:g}", rs[0]["path"], str(len(rs)), f"{np.percentile(lat, 50):.3f}",
                      f"{np.percentile(lat, 99):.3f}", acc)
    console.print(table)
    if args.log:
        from oat_edge.fileio import atomic_write_text

        atomic_write_text(args.log, "".join(json.dumps(r) + "\n" for r in log))
        console.print(f"per-frame log: {Path(args.log)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
