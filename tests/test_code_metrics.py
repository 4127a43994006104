"""The product source stays legible: no file over 500 lines, no function over 60
(scripts/code_metrics.py, the figures docs/architecture.md quotes)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_product_file_or_function_over_the_limits():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "code_metrics.py")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_metrics_catch_a_long_function(tmp_path):
    """The check fires: a copy of the tool run on a folder holding one 61-line function."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "long.py").write_text("def f():\n" + "    x = 1\n" * 60)
    tool = tmp_path / "scripts" / "code_metrics.py"
    tool.parent.mkdir()
    tool.write_text((ROOT / "scripts" / "code_metrics.py").read_text())
    run = subprocess.run([sys.executable, str(tool), "pkg"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1 and "pkg/long.py:f: 61 lines" in run.stdout
