"""The C++ FiLM computer and its Python twin judge the same site tables alike (tests/film_cases.py):
the same malformed tables are refused with the same error, the valid ones accepted, and no
offset or size near the int64 limits makes the C++ side write outside its buffer. The slow test
builds the extension with AddressSanitizer and UBSan into a temporary folder and runs the shared
list and random edge-value tables through it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from film_cases import CASES, computer, generators, verdict
from oat_edge.runtime import _fallback
from oat_edge.runtime._native import load

from runtime_support import impl_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_twins_give_the_same_verdict_on_each_film_table(case):
    from oat_edge.runtime._native import ext_import_error

    if ext_import_error() is not None:
        pytest.skip("C++ extension not built")
    name, sites, film_size, valid = case
    ext, py = verdict(load("ext"), sites, film_size), verdict(_fallback, sites, film_size)
    assert ext == py, f"{name}: ext {ext}, python {py}"
    assert (ext[0] == "ok") == valid, f"{name}: {ext}"


@pytest.mark.parametrize("impl", impl_params())
def test_accepted_tables_write_only_inside_their_vector(impl):
    """Guard zones on both sides of the output stay untouched."""
    mod = load(impl)
    for name, sites, film_size, valid in CASES:
        if not valid or film_size == 0:
            continue
        comp = computer(mod)
        idx = comp.add_width(np.array(sites, np.int64).reshape(-1, 2), *generators(sites), film_size)
        buf = np.full(film_size + 64, 7.0, np.float32)
        comp.compute(0.3, idx, buf[32:32 + film_size])
        assert np.all(buf[:32] == 7.0) and np.all(buf[32 + film_size:] == 7.0), name


def _asan_preload():
    """LD_PRELOAD for an uninstrumented python: the ASan runtime first, then libstdc++ (else ASan
    cannot intercept C++ exceptions thrown by the extension)."""
    cxx = shutil.which("g++")
    if cxx is None:
        return None
    libs = [subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
            for name in ("libasan.so", "libstdc++.so.6")]
    return " ".join(libs) if all(os.path.isabs(p) and os.path.exists(p) for p in libs) else None


@pytest.mark.slow
def test_film_computer_under_address_sanitizer(tmp_path):
    """A separate ASan/UBSan build of the extension runs the malformed tables (and 3000 random
    edge-value tables) with the Python twin beside it; any out-of-bounds access aborts it."""
    preload = _asan_preload()
    if preload is None or shutil.which("cmake") is None:
        pytest.skip("no g++ with AddressSanitizer or no cmake here")
    build = tmp_path / "asan"
    flags = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                    f"-DPython_EXECUTABLE={sys.executable}", "-DOATEDGE_TENSORRT=OFF",
                    f"-DCMAKE_CXX_FLAGS={flags}", f"-DCMAKE_MODULE_LINKER_FLAGS={flags}",
                    f"-DCMAKE_SHARED_LINKER_FLAGS={flags}"],
                   check=True, capture_output=True, env={**os.environ, "OATEDGE_NO_EXT": "0"})
    subprocess.run(["cmake", "--build", str(build), "--target", "_ext"], check=True, capture_output=True)
    env = {**os.environ, "LD_PRELOAD": preload, "ASAN_OPTIONS": "detect_leaks=0:redzone=256",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "asan_film_check.py"), str(build)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "no ASan report" in r.stdout
