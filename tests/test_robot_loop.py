"""examples/robot_loop.py with real sources (a video file written here, an image folder) and
real attack episodes precomputed by examples/attack_frames.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _py(*args, env=None, timeout=600):
    import os

    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + ([env] if env else [])))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture(scope="module")
def folder_bundle(tmp_path_factory):
    """A 3-class model trained on a PNG folder (1 epoch), exported: (checkpoint, bundle, folder)."""
    from oat_edge.cli import main
    from test_own_data import write_folder

    tmp = tmp_path_factory.mktemp("robot")
    root = write_folder(tmp / "imgs", per_class=6)
    ckpt, bundle = tmp / "c.pt", tmp / "bundle"
    assert main(["train", "--dataset", f"folder:{root}", "--image-size", "24", "--epochs", "1", "--batch-size", "6",
                 "--method", "oat", "--arch-kwargs", '{"channels": [8, 16, 32]}', "--threads", "1",
                 "--no-progress", "--out", str(ckpt)]) == 0
    assert main(["export", str(ckpt), "-o", str(bundle), "--tensorrt", "off", "--grid-lambdas", "0", "0.5", "1",
                 "--parity-images", "4", "--no-progress"]) == 0
    return ckpt, bundle, root


def write_video(path: Path, n: int, size=(48, 64)) -> None:
    cv2 = pytest.importorskip("cv2")
    h, w = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    assert out.isOpened()
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
        frame[h // 4: 3 * h // 4, w // 4: 3 * w // 4, i % 3] = 230  # BGR: blue, green, red squares
        out.write(frame)
    out.release()


@pytest.mark.slow
def test_video_source_with_real_attack_episodes(folder_bundle, tmp_path):
    ckpt, bundle, _ = folder_bundle
    video = tmp_path / "clip.avi"
    write_video(video, 150)
    adv = tmp_path / "adv.npz"
    common = ["--bundle", bundle, "--source", f"video:{video}", "--frames", "150", "--fps", "30"]
    r = _py(EXAMPLES / "attack_frames.py", "--checkpoint", ckpt, *common, "--attacks", "pgd7", "--out", adv)
    assert r.returncode == 0, r.stderr
    with np.load(adv) as z:
        idx, modes = z["indices"], z["modes"]
        assert str(z["label_source"]) == "the attacked mode's own clean prediction"
        assert all(z[f"labels_{k}"].shape == (60,) for k in range(len(z["modes"])))
        assert list(idx) == [i for i in range(150) if 90 <= i < 150]  # the 3-5 s episode at 30 fps
        assert [0.0, 1.0] in modes.tolist()
    log = tmp_path / "log.jsonl"
    r = _py(EXAMPLES / "robot_loop.py", *common, "--attack-frames", adv, "--control-hz", "2000",
            "--backend", "onnxruntime", "--threads", "1", "--log", log)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert [f["frame"] for f in frames] == list(range(150))
    assert all(f["attacked"] == (f["frame"] >= 90) for f in frames)
    assert summary["episode_frames"] == 60 and 0.0 <= summary["attack_acc_switching"] <= 1.0
    assert 0.0 <= summary["attack_acc_fixed_clean"] <= 1.0 and summary["fixed_clean_mode"] == [0.0, 1.0]
    assert summary["latency_ms_p50"] > 0
    assert "accuracy" in r.stdout and "with the switching policy" in r.stdout
    # the attacked frames ran in the mode the attack targeted, bar the few a switch overtook
    hit = [f for f in frames if f["attacked"]]
    assert np.mean([f["attack_target"] == [f["lam"], f["width"]] for f in hit]) >= 0.8


@pytest.mark.slow
def test_image_folder_source_is_labelled_by_class_folder(folder_bundle, tmp_path):
    _, bundle, root = folder_bundle
    log = tmp_path / "log.jsonl"
    r = _py(EXAMPLES / "robot_loop.py", "--bundle", bundle, "--source", f"folder:{root}", "--frames", "20",
            "--fps", "0", "--backend", "onnxruntime", "--threads", "1", "--log", log)
    assert r.returncode == 0, r.stderr
    frames = [json.loads(x) for x in log.read_text().splitlines()][:-1]
    assert {f["label"] for f in frames} == {0, 1, 2}


def test_missing_opencv_is_one_clear_line(tmp_path):
    """With cv2 not importable, a video source says how to install it (no traceback)."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "cv2.py").write_text("raise ImportError('cv2 blocked for this test')\n")
    bundle = Path(__file__).parent / "fixtures" / "legacy_bundle"
    r = _py(EXAMPLES / "robot_loop.py", "--bundle", bundle, "--source", "video:x.avi", "--frames", "5",
            "--backend", "onnxruntime", env=str(block))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("robot_loop: error:") and "pip install 'oat-edge[video]'" in err[-1]
    assert "Traceback" not in r.stderr
