"""The runtime's minimal install is what README.md says it is: numpy and onnxruntime (plus
`cryptography` only where a signature is checked). Each test runs a real bundle in a fresh
interpreter whose import system refuses every other package oat-edge can use."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from fixture_data import load_expected

FIXTURES = Path(__file__).parent / "fixtures"
BUNDLE = FIXTURES / "legacy_bundle"

# Everything oat-edge depends on or may import apart from numpy and onnxruntime.
NOT_NEEDED = ("pydantic", "cryptography", "rich", "torch", "onnx", "onnxscript", "onnxsim", "sklearn", "scipy",
              "matplotlib", "PIL", "psutil", "cv2", "tensorrt", "pycuda", "hypothesis")

PRELUDE = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = set(json.loads(sys.argv[1]))
    ATTEMPTS = []

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                ATTEMPTS.append(name)
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, Refuse())
    import warnings
    warnings.simplefilter("ignore")
    import numpy as np
    from oat_edge.runtime import Runtime
""")


def _run(body: str, blocked=NOT_NEEDED, *args: str) -> dict:
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(blocked)), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _expected():
    return load_expected("legacy")


def test_unsigned_bundle_runs_with_numpy_and_onnxruntime_only(tmp_path):
    expected = _expected()
    np.save(tmp_path / "images.npy", expected["images"])
    lam, width = expected["info"]["modes"][0]
    out = _run("""
        images = np.load(sys.argv[2])
        with Runtime(sys.argv[3], backend="onnxruntime", threads=1, impl="python") as rt:
            rt.set_mode(float(sys.argv[4]), float(sys.argv[5]))
            logits = rt.infer(images)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({"logits": logits.tolist(), "attempts": ATTEMPTS, "loaded": loaded}))
    """, NOT_NEEDED, str(tmp_path / "images.npy"), str(BUNDLE), str(lam), str(width))
    assert out["loaded"] == []
    assert out["attempts"] == [], f"the runtime tried to import {out['attempts']}"
    np.testing.assert_allclose(np.array(out["logits"], np.float32), expected["python_0"], rtol=0, atol=1e-6)


def test_trusted_keys_without_cryptography_is_one_dependency_error(tmp_path):
    key = tmp_path / "robot-key.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    out = _run("""
        from oat_edge.errors import DependencyError
        try:
            Runtime(sys.argv[2], backend="onnxruntime", threads=1, trusted_keys=[sys.argv[3]])
            result = "loaded"
        except DependencyError as e:
            result = str(e)
        print(json.dumps({"result": result}))
    """, ("cryptography",), str(BUNDLE), str(key))
    assert "cryptography" in out["result"] and "pip install cryptography" in out["result"]
