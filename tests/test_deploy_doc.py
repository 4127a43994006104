"""docs/deploy.md's commands, run as written on a tiny generated image folder. Only the sizes
are shrunk (flags appended below) and the places are mapped into a temp folder: the robot's
/opt/oat/bundle, `scp` to it (a local copy) and its camera (the image folder: no camera in CI)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"

# Appended per command: tiny sizes and one thread (the commands stay the documented ones).
TINY = {
    "train": ["--epochs", "1", "--batch-size", "6", "--widths", "0.5", "1.0", "--arch-kwargs",
              '{"channels": [8, 16, 32]}', "--threads", "1", "--no-progress"],
    "eval": ["--max-images", "6", "--attacks", "pgd7", "--no-masking-checks", "--threads", "1", "--no-progress"],
    "export": ["--calib-max-images", "6", "--calib-attacks", "pgd7", "--calib-lambdas", "0", "1",
               "--grid-lambdas", "0", "0.5", "1", "--tensorrt", "off", "--no-progress"],
    "verify": ["--threads", "1"],
    "robot_loop.py": ["--frames", "12", "--fps", "0", "--backend", "onnxruntime", "--threads", "1"],
}


def doc_commands():
    text = DOC.read_text()
    block = re.search(r"<!-- deploy-commands[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "docs/deploy.md lost its deploy-commands block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_block_is_the_full_path():
    words = [shlex.split(c)[:2] for c in doc_commands()]
    assert [w[1] if w[0] == "oat-edge" else w[0] for w in words] == [
        "train", "eval", "export", "scp", "verify", "python"]


@pytest.mark.slow
def test_deploy_doc_commands_run(tmp_path):
    from test_own_data import write_folder

    write_folder(tmp_path / "my_images", per_class=6)
    robot = tmp_path / "robot"
    (robot / "opt" / "oat").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for line in doc_commands():
        line = line.replace("/opt/oat/", f"{robot}/opt/oat/")
        argv = shlex.split(line)
        if argv[0] == "scp":  # the copy to the robot, done locally
            argv = ["cp", "-r", argv[2], argv[3].split(":", 1)[1]]
        elif argv[0] == "oat-edge":
            argv = [sys.executable, "-m", "oat_edge", *argv[1:], *TINY.get(argv[1], [])]
        elif argv[0] == "python":
            script = Path(argv[1]).name
            argv = [sys.executable, str(ROOT / argv[1]), *argv[2:], *TINY[script]]
            argv = [a if a != "camera:0" else f"folder:{tmp_path / 'my_images'}" for a in argv]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert (tmp_path / "eval.json").is_file() and (robot / "opt" / "oat" / "bundle" / "manifest.json").is_file()
    import json

    manifest = json.loads((robot / "opt" / "oat" / "bundle" / "manifest.json").read_text())
    assert manifest["calibration"]["split"] == "val"
    assert manifest["preprocessing"]["class_names"] == ["blue", "green", "red"]
