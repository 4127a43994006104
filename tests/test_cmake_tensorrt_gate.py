"""The CMake gate on the TensorRT version (cmake/OatEdgeTensorRT.cmake): the executor is built
only against TensorRT >= 10; with OATEDGE_TENSORRT=AUTO an older TensorRT builds the extension
without it and says why, with ON the configure stops. Headers here are written by the tests in
the two macro styles TensorRT uses (numbers up to 10, TRT_*_ENTERPRISE in 11)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake not installed")

NUMERIC = "#define NV_TENSORRT_MAJOR {0} //!< major\n#define NV_TENSORRT_MINOR {1}\n#define NV_TENSORRT_PATCH {2}\n"
ENTERPRISE = ("#define TRT_MAJOR_ENTERPRISE {0}\n#define TRT_MINOR_ENTERPRISE {1}\n#define TRT_PATCH_ENTERPRISE {2}\n"
              "#define TRT_BUILD_ENTERPRISE 106\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n"
              "#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n")


def fake_tensorrt(root: Path, text: str) -> Path:
    inc = root / "include"
    inc.mkdir(parents=True)
    (inc / "NvInfer.h").write_text("// test header\n")
    if text is not None:
        (inc / "NvInferVersion.h").write_text(text)
    lib = root / "lib"
    lib.mkdir()
    (lib / "libnvinfer.so").write_bytes(b"")
    return inc


def gate(inc: Path):
    script = inc.parent / "gate.cmake"
    script.write_text(f'include("{(ROOT / "cmake" / "OatEdgeTensorRT.cmake").as_posix()}")\n'
                      f'oatedge_tensorrt_gate("{inc.as_posix()}" v why)\nmessage("[${{v}}] [${{why}}]")\n')
    r = subprocess.run([CMAKE, "-P", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stderr.strip()


@pytest.mark.parametrize("text,out", [
    (NUMERIC.format(10, 3, 0), "[10.3.0] []"),
    (NUMERIC.format(10, 0, 1), "[10.0.1] []"),
    (ENTERPRISE.format(11, 1, 0), "[11.1.0] []"),
    (NUMERIC.format(8, 6, 1), "[8.6.1] [TensorRT 8.6.1 ("),
    ("// nothing useful\n", "[] [cannot read the TensorRT version"),
    (None, "[] ["),
])
def test_gate_reads_both_macro_styles(tmp_path, text, out):
    got = gate(fake_tensorrt(tmp_path / "trt", text))
    assert got.startswith(out), got
    if text and text.startswith("#define NV_TENSORRT_MAJOR 8"):
        assert "older than 10.0" in got
    if text is None:
        assert "NvInferVersion.h not found" in got


def _configure(tmp_path, inc, mode):
    cmd = [CMAKE, "-S", str(ROOT), "-B", str(tmp_path / f"build-{mode}"), f"-DPython_EXECUTABLE={sys.executable}",
           f"-DOATEDGE_TENSORRT={mode}", f"-DTENSORRT_INCLUDE_DIR={inc}", f"-DTENSORRT_NVINFER={inc.parent / 'lib' / 'libnvinfer.so'}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, " ".join((r.stdout + r.stderr).split())


def test_tensorrt_8_builds_the_extension_without_the_executor(tmp_path):
    inc = fake_tensorrt(tmp_path / "trt8", NUMERIC.format(8, 6, 1))
    rc, log = _configure(tmp_path, inc, "AUTO")
    if "nanobind not found" in log or "Python development files not found" in log:
        pytest.skip("no nanobind/Python headers: the extension is not configured at all here")
    assert rc == 0, log
    assert "building the extension without the TensorRT executor: TensorRT 8.6.1" in log and "older than 10.0" in log
    assert "building the TensorRT executor" not in log
    rc, log = _configure(tmp_path, inc, "ON")
    assert rc != 0 and "OATEDGE_TENSORRT=ON but the TensorRT executor cannot be built: TensorRT 8.6.1" in log
