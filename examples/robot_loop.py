"""A robot's perception loop that trades accuracy, robustness and latency at run time.

Frames come from a real source — a video file, a folder of images or a camera (OpenCV), or,
with no camera, scikit-learn digits standing in for one — at a fixed rate, and go through
``Runtime.infer_frames`` (the bundle's preprocessing contract: any frame size, BGR or RGB).
A control thread watches a threat signal (simulated: quiet stretches with attack episodes) and
a latency budget, and switches the model's mode (λ, width) while the perception loop keeps
running — a switch costs microseconds, no reload, and every frame runs wholly in one mode.

Attack episodes are real when ``--attack-frames`` names the file ``examples/attack_frames.py``
wrote: during an episode the loop feeds adversarial inputs, precomputed ahead of time by the
strong attack against the exported model in the mode the loop is in (the attacker is
white-box and adaptive; the loop itself stays torch-free). The summary then reports accuracy
under attack with the switching policy against a fixed clean mode (λ = 0, widest width) on
the same episode frames, and clean accuracy outside the episodes. (The attacker perturbs the
model-size input, after the camera frame is resized: the strongest place to attack.)

Mode choice:
- a calibrated bundle (`oat-edge export --calibrate`): `rt.select(min_robust_acc=..., max_latency_ms=...)`
  with the robust-accuracy floor rising with the threat;
- otherwise a fixed table: λ follows the threat level, and the width is the widest whose
  latency on this device fits the budget.

    python examples/attack_frames.py --checkpoint ckpt.pt --bundle bundle/ --out attack.npz
    python examples/robot_loop.py --bundle bundle/ --attack-frames attack.npz --log run.jsonl
    python examples/robot_loop.py --bundle bundle/ --source video:clip.mp4 --fps 30
    python examples/robot_loop.py --bundle bundle/ --source camera:0 --frames 600
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

EPISODE_THREAT = 0.3  # threat at or above this is an attack episode


def threat_signal(t: float, seed: int = 0) -> float:
    """Threat level in [0, 1] at time t (s): low background noise with two attack episodes in
    every 10 s window (a detector's output would go here)."""
    phase = t % 10.0
    episode = 0.9 if 3.0 <= phase < 5.0 else (0.55 if 7.0 <= phase < 8.0 else 0.1)
    wobble = 0.05 * math.sin(2.0 * math.pi * (t + seed) / 1.7)
    return float(min(1.0, max(0.0, episode + wobble)))


def episode_frames(n: int, fps: float, seed: int = 0) -> np.ndarray:
    """Indices of the frames that fall in an attack episode (the scenario runs on the stream's
    clock: frame index / nominal rate)."""
    fps = fps or 30.0
    return np.array([i for i in range(n) if threat_signal(i / fps, seed) >= EPISODE_THREAT], dtype=np.int64)


# --- frame sources ---------------------------------------------------------------------------


class SourceError(Exception):
    """A source that cannot be opened (printed as one line, exit status 2)."""


def _cv2():
    try:
        import cv2
    except ImportError:
        raise SourceError("video files and cameras are read with OpenCV, which is not installed: "
                          "pip install 'oat-edge[video]' (opencv-python-headless)") from None
    return cv2


def read_source(spec: str, n: int, seed: int, class_names=None):
    """(frames, labels or None, color): up to ``n`` frames of the source.

    digits            scikit-learn digits (values 0..16, grey 8×8), drawn with the seed
    folder:PATH       images under PATH (sorted; Pillow); a sub-folder named after one of the
                      bundle's classes labels its images
    video:PATH        frames of a video file (OpenCV, BGR)
    camera:INDEX      live frames of a camera (OpenCV, BGR)
    """
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        idx = np.random.default_rng(seed).integers(0, len(data.images), n)
        return [img.astype(np.float32) for img in data.images[idx]], data.target[idx].astype(np.int64), "rgb"
    if kind == "folder":
        from PIL import Image

        root = Path(arg)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise SourceError(f"--source {spec}: no .png/.jpg images under {root}")
        files = [files[i % len(files)] for i in range(n)]  # loop over a short folder
        names = {c: i for i, c in enumerate(class_names or [])}
        labels = [names.get(p.parent.name) for p in files]
        frames = []
        for p in files:
            try:
                with Image.open(p) as im:
                    frames.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise SourceError(f"{p}: not a readable image ({e})") from None
        lab = np.array(labels, dtype=np.int64) if all(v is not None for v in labels) else None
        return frames, lab, "rgb"
    if kind in ("video", "camera"):
        cv2 = _cv2()
        cap = cv2.VideoCapture(int(arg) if kind == "camera" else arg)
        if not cap.isOpened():
            raise SourceError(f"--source {spec}: OpenCV cannot open it")
        if kind == "camera":
            return _live(cap, n, spec), None, "bgr"  # read in the loop, at the camera's pace
        frames = []
        try:
            while len(frames) < n:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(frame)
        finally:
            cap.release()
        if not frames:
            raise SourceError(f"--source {spec}: no frames could be read")
        return frames, None, "bgr"
    raise SourceError(f"--source must be digits, folder:PATH, video:PATH or camera:INDEX; got {spec!r}")


def _live(cap, n: int, spec: str):
    try:
        for _ in range(n):
            ok, frame = cap.read()
            if not ok:
                raise SourceError(f"--source {spec}: the camera stopped delivering frames")
            yield frame
    finally:
        cap.release()


class AttackFrames:
    """Adversarial inputs precomputed by examples/attack_frames.py (an .npz, read without
    pickle): for every episode frame and every attacked mode, the model input the attack made."""

    def __init__(self, path, n_frames: int, source: str, input_shape):
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        self.indices = [int(i) for i in data["indices"]]
        self.modes = [(float(lam), float(w)) for lam, w in data["modes"]]
        self.adv = [data[f"adv_{k}"] for k in range(len(self.modes))]  # each [n_episode, C, H, W]
        self.labels = [data[f"labels_{k}"] for k in range(len(self.modes))]  # per attacked mode
        self.label_source = str(data["label_source"])
        self.attack = str(data["attack"])
        self.eps = float(data["eps"])
        self.position = {idx: k for k, idx in enumerate(self.indices)}
        if str(data["source"]) != source or int(data["n_frames"]) != n_frames:
            raise SourceError(f"{path} was made for --source {data['source']} --frames {int(data['n_frames'])}; "
                              f"this run is --source {source} --frames {n_frames}")
        if tuple(self.adv[0].shape[1:]) != tuple(input_shape):
            raise SourceError(f"{path} holds inputs of shape {list(self.adv[0].shape[1:])}, the bundle takes "
                              f"{list(input_shape)}")

    def target(self, mode) -> int:
        """The attacked mode closest to ``mode`` (the same one when it was attacked)."""
        return min(range(len(self.modes)), key=lambda k: (abs(self.modes[k][1] - mode.width),
                                                         abs(self.modes[k][0] - mode.lam)))

    def clean_mode(self) -> int:
        """The fixed clean baseline: the smallest attacked λ (0 when the bundle has it) at the widest width."""
        widest = max(w for _, w in self.modes)
        return self.modes.index((min(lam for lam, w in self.modes if w == widest), widest))


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
            fits = [w for w in self.rt.widths if self.rt.latency_ms(lam, w, quantile="p99") <= self.budget_ms]
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


def default_source(rt) -> str:
    return "digits" if tuple(rt.input_shape) == (1, 8, 8) else "noise"


def load_stream(spec: str, rt, n: int, seed: int):
    """(frames, labels, color) of ``--source``; "noise" is random uint8 frames for a bundle
    with no sample data (640×480 when the bundle resizes, else its own size)."""
    if spec == "noise":
        pre = rt.preprocessing
        c, h, w = rt.input_shape
        shape = (480, 640, 3) if pre.get("resize") else (h, w, c)
        rng = np.random.default_rng(seed)
        if pre.get("source_dtype") == "uint8":
            return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)], None, "bgr"
        lo, hi = pre.get("source_range") or (0.0, 1.0)
        return [(lo + (hi - lo) * rng.random(shape)).astype(np.float32) for _ in range(n)], None, "rgb"
    return read_source(spec, n, seed, rt.class_names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle folder written by `oat-edge export`")
    parser.add_argument("--source", default=None, metavar="SRC",
                        help="digits (scikit-learn, no camera needed; the default for 8×8 grey bundles), "
                        "folder:PATH, video:PATH, camera:INDEX (OpenCV), or noise (the default otherwise)")
    parser.add_argument("--frames", type=int, default=300, help="frames to process (default 300)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate; 0 runs as fast as possible (default 30)")
    parser.add_argument("--attack-frames", metavar="NPZ", default=None,
                        help="adversarial inputs from examples/attack_frames.py: fed during the attack episodes")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime, torch or tensorrt")
    parser.add_argument("--providers", nargs="+", metavar="EP", default=None,
                        help="onnxruntime execution providers in order, e.g. cuda cpu (backend onnxruntime)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="latency budget per frame (default: half the frame period, or 5 ms at --fps 0)")
    parser.add_argument("--control-hz", type=float, default=20.0, help="mode-control rate (default 20 Hz)")
    parser.add_argument("--log", default=None, metavar="FILE", help="write one JSON line per frame")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from oat_edge.errors import OatEdgeError

    try:
        return run(args)
    except (SourceError, OatEdgeError) as e:  # bad bundle, source or frames: one line, no traceback
        print(f"robot_loop: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from oat_edge import Mode
    from oat_edge.runtime import Runtime

    console = Console()
    kwargs = {"providers": args.providers} if args.providers else {}
    rt = Runtime(args.bundle, backend=args.backend, threads=args.threads, **kwargs)
    period = 1.0 / args.fps if args.fps > 0 else 0.0
    budget = args.budget_ms or (period * 1e3 / 2 if period else 5.0)
    source = args.source or default_source(rt)
    frames, labels, color = load_stream(source, rt, args.frames, args.seed)
    attack = AttackFrames(args.attack_frames, args.frames, source, rt.input_shape) if args.attack_frames else None
    console.print(f"[bold]{rt.bundle_dir}[/]: backend {rt.backend_name} ({rt.backend_reason}), "
                  f"{'calibrated' if rt.calibrated else 'no calibration: fixed mode table'}, "
                  f"budget {budget:g} ms, {args.fps:g} fps, source {source}"
                  + (f", adversarial episodes ({attack.attack}, ε = {attack.eps:g})" if attack else ""))

    # The threat scenario runs on the stream's clock (frame index / nominal rate), so a run at
    # --fps 0 sees the same episodes as one in real time.
    frame_index = [0]
    nominal_fps = args.fps or 30.0
    control = Controller(rt, budget, lambda: frame_index[0] / nominal_fps, hz=args.control_hz, seed=args.seed)
    control.choose(0.0)  # measures path latencies once (uncalibrated table / select) before the clock runs
    control.start()
    log, misses = [], 0
    start = next_tick = time.perf_counter()
    for i, frame in enumerate(frames):
        if i >= args.frames:
            break
        frame_index[0] = i
        attacked = attack is not None and i in attack.position
        t0 = time.perf_counter()
        if attacked:
            # The attacker targets the mode the robot is in right now (white-box, adaptive).
            k = attack.target(rt.mode)
            logits, mode = rt.infer_with_mode(attack.adv[k][attack.position[i]][None])
        else:
            x = rt.preprocess(frame, color)
            logits, mode = rt.infer_with_mode(x)
        ms = (time.perf_counter() - t0) * 1e3
        pred = int(logits[0].argmax())
        rec = {"frame": i, "t": round(t0 - start, 4), "threat": round(control.threat, 3), "lam": mode.lam,
               "width": mode.width, "path": rt.path_for(mode.lam, mode.width), "latency_ms": round(ms, 4),
               "prediction": pred, "attacked": attacked}
        if attacked:
            rec["attack_target"] = list(attack.modes[k])
            rec["label"] = int(attack.labels[k][attack.position[i]])  # the source's, or the mode's clean answer
        elif labels is not None:
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
    for col in ("λ", "width", "path", "frames", "attacked", "p50 ms", "p99 ms", "accuracy"):
        table.add_column(col, justify="right")
    for (lam, width), rs in sorted(by_mode.items()):
        lat = np.array([r["latency_ms"] for r in rs])
        table.add_row(f"{lam:g}", f"{width:g}", rs[0]["path"], str(len(rs)), str(sum(r["attacked"] for r in rs)),
                      f"{np.percentile(lat, 50):.3f}", f"{np.percentile(lat, 99):.3f}", _acc(rs))
    console.print(table)
    summary = {"frames": len(log), "seconds": round(wall, 3), "switches": control.switches, "over_budget": int(misses),
               "latency_ms_p50": float(np.percentile([r["latency_ms"] for r in log], 50)),
               "latency_ms_p99": float(np.percentile([r["latency_ms"] for r in log], 99))}
    if attack is not None:
        summary.update(_attack_summary(rt, attack, log, Mode))
        console.print(f"under attack ({len(attack.indices)} episode frames, {attack.attack} at ε = {attack.eps:g}): "
                      f"accuracy {summary['attack_acc_switching']:.1%} with the switching policy vs "
                      f"{summary['attack_acc_fixed_clean']:.1%} in the fixed clean mode "
                      f"(λ = {summary['fixed_clean_mode'][0]:g}, width {summary['fixed_clean_mode'][1]:g}); "
                      f"labels: {attack.label_source}")
    outside = [r for r in log if not r["attacked"] and "label" in r]
    if outside:
        summary["clean_acc_outside"] = float(np.mean([r["prediction"] == r["label"] for r in outside]))
        console.print(f"clean accuracy outside the episodes: {summary['clean_acc_outside']:.1%} ({len(outside)} frames)")
    console.print(f"latency p50 {summary['latency_ms_p50']:.3f} ms, p99 {summary['latency_ms_p99']:.3f} ms per frame "
                  "(preprocessing + inference)")
    if args.log:
        from oat_edge.fileio import atomic_write_text

        atomic_write_text(args.log, "".join(json.dumps(r) + "\n" for r in log) + json.dumps({"summary": summary}) + "\n")
        console.print(f"per-frame log: {Path(args.log)}")
    return 0


def _acc(rs) -> str:
    scored = [r for r in rs if "label" in r]
    return f"{np.mean([r['prediction'] == r['label'] for r in scored]):.2f}" if scored else "-"


def _attack_summary(rt, attack: AttackFrames, log, Mode) -> dict:
    """Accuracy on the episode frames as the loop ran them, and — the baseline — the same
    frames attacked and classified in the fixed clean mode (λ = 0, widest width), run after
    the loop on the same runtime."""
    hit = [r for r in log if r["attacked"]]
    switching = float(np.mean([r["prediction"] == r["label"] for r in hit])) if hit else float("nan")
    k = attack.clean_mode()
    rt.set_mode(Mode(*attack.modes[k]))
    idx = [attack.position[r["frame"]] for r in hit]
    preds = np.concatenate([rt.infer(attack.adv[k][j:j + 1]).argmax(1) for j in idx]) if idx else np.zeros(0)
    fixed = float(np.mean(preds == attack.labels[k][idx])) if idx else float("nan")
    return {"attack": attack.attack, "eps": attack.eps, "episode_frames": len(hit), "labels": attack.label_source,
            "attack_acc_switching": switching, "attack_acc_fixed_clean": fixed,
            "fixed_clean_mode": list(attack.modes[k])}


if __name__ == "__main__":
    sys.exit(main())
