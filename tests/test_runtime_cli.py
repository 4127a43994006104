"""`oat-edge run` and examples/robot_loop.py on the test bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oat_edge.cli import main

from runtime_support import bundle_path, reference_logits, sample_images

ROOT = Path(__file__).resolve().parents[1]


def test_run_with_explicit_mode_writes_predictions(tmp_path, capsys):
    x = sample_images(6, seed=5)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.json"
    rc = main(["run", str(bundle_path()), "--images", str(tmp_path / "x.npy"), "--lam", "0.123", "--width", "0.75",
               "--batch", "4", "--backend", "onnxruntime", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    ref = reference_logits(x, 0.123, 0.75)
    assert res["mode"] == {"lam": 0.123, "width": 0.75} and res["path"] == "a_w0.75"
    assert res["predictions"] == ref.argmax(1).tolist()
    assert np.abs(np.array(res["logits"]) - ref).max() <= 1e-4
    assert "a_w0.75" in capsys.readouterr().out


def test_run_errors_are_one_line(tmp_path, capsys):
    np.save(tmp_path / "u8.npy", (sample_images(2) * 255).astype(np.uint8))
    cases = [
        (["--lam", "1.5", "--width", "1"], "λ must be in [0, 1]"),
        (["--lam", "0.5", "--width", "0.6"], "widths are 0.5, 0.75, 1"),
        (["--lam", "0.5"], "--lam and --width go together"),
        (["--lam", "0.5", "--width", "1", "--max-latency-ms", "3"], "not both"),
        (["--images", str(tmp_path / "u8.npy"), "--lam", "0.5", "--width", "1"], "/ 255"),
        (["--min-robust-acc", "0.5"], "--calibrate"),
    ]
    for args, message in cases:
        assert main(["run", str(bundle_path()), "--backend", "onnxruntime"] + args) == 2
        # one error line (an unsigned bundle adds its own one-line warning before it)
        err = "".join(line + "\n" for line in capsys.readouterr().err.splitlines() if ": warning: " not in line)
        assert message in err and err.count("\n") == 1, err
    # uint8 pixels scaled explicitly are fine
    assert main(["run", str(bundle_path()), "--backend", "onnxruntime", "--images", str(tmp_path / "u8.npy"),
                 "--scale", "255", "--lam", "0.5", "--width", "1"]) == 0


@pytest.mark.slow
def test_robot_loop_example(tmp_path):
    log = tmp_path / "frames.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "robot_loop.py"), "--bundle", str(bundle_path()),
                        "--frames", "160", "--fps", "30", "--control-hz", "2000", "--backend", "onnxruntime",
                        "--log", str(log)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "160 frames" in r.stdout and "mode switches" in r.stdout
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert [f["frame"] for f in frames] == list(range(160))
    assert summary["frames"] == 160 and "clean_acc_outside" in summary and "attack_acc_switching" not in summary
    assert {"lam", "width", "path", "latency_ms", "prediction", "label", "threat"} <= set(frames[0])
    # 400 frames at the nominal 30 fps span the first attack episode (3–5 s): λ rises with it
    # (the control thread runs on its own clock, so a frame may still be in the previous mode).
    quiet = [f["lam"] for f in frames if f["threat"] < 0.3]
    attacked = [f["lam"] for f in frames if f["threat"] > 0.8]
    assert quiet and attacked and np.mean(attacked) > np.mean(quiet) + 0.3
    assert len({(f["lam"], f["width"]) for f in frames}) >= 2
