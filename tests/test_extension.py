"""The C++ extension (oat_edge.runtime._ext) against its pure-Python twin (_fallback) and
against the numpy reference formulas — no bundle needed.

CI sets OATEDGE_REQUIRE_EXT=1: there the extension must be built and importable (a build
that silently fell back to Python would otherwise pass every test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from oat_edge.lambda_code import S1, encode_lambdas, make_code_matrix
from oat_edge.runtime import _fallback
from oat_edge.runtime._native import ext_import_error, load

from runtime_support import impl_params, require_ext

SLOPE = 0.1


def test_extension_builds_and_imports_when_required():
    err = ext_import_error()
    if require_ext():
        assert err is None, f"OATEDGE_REQUIRE_EXT=1 but the extension does not import: {err}"
        assert load("auto").__name__ == "oat_edge.runtime._ext"
    elif err is not None:
        pytest.skip(f"extension not built here: {err}")
    ext = load("ext")
    assert hasattr(ext, "ModeRegister") and hasattr(ext, "FilmComputer") and isinstance(ext.has_tensorrt, bool)


def test_no_ext_env_selects_fallback(monkeypatch):
    monkeypatch.setenv("OATEDGE_NO_EXT", "1")
    monkeypatch.delenv("OATEDGE_REQUIRE_EXT", raising=False)
    assert load("auto") is _fallback
    assert load("python") is _fallback


_LOAD_TWICE = textwrap.dedent("""
    import warnings
    warnings.simplefilter("always")
    from oat_edge.runtime import _native
    print("IMPL", _native.impl_name(_native.load("auto")), _native.impl_name(_native.load("auto")))
""")


def _plain_env():
    env = dict(os.environ)
    env.pop("OATEDGE_NO_EXT", None)
    env.pop("OATEDGE_REQUIRE_EXT", None)
    return env


def test_a_missing_extension_is_announced_once_with_the_cause():
    """``load("auto")`` without an importable extension runs the Python twin and says so once
    per process, with the import error and the fix."""
    code = "import sys; sys.modules['oat_edge.runtime._ext'] = None\n" + _LOAD_TWICE  # (None: import fails)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_plain_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "IMPL python python" in r.stdout
    assert r.stderr.count("FallbackWarning") == 1, r.stderr
    assert "oat_edge.runtime._ext" in r.stderr and "pip install -e . --no-build-isolation" in r.stderr


def test_the_checkout_runtime_without_an_extension_names_the_repository_root(tmp_path):
    """Python started in the root of a checkout imports its oat_edge/ and runtime/, which have
    no built extension even when oat-edge is installed: the warning names that cause. (-S:
    without the editable install's finder, as with a regular install; PYTHONPATH: its packages.)"""
    root = Path(__file__).resolve().parents[1]
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "csrc")
    for folder in ("oat_edge", "runtime"):
        shutil.copytree(root / folder, tmp_path / folder, ignore=ignore)
    env = {**_plain_env(), "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    r = subprocess.run([sys.executable, "-S", "-c", _LOAD_TWICE], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "IMPL python python" in r.stdout
    assert r.stderr.count("FallbackWarning") == 1, r.stderr
    assert f"source checkout {tmp_path}" in r.stderr and "outside the repository root" in r.stderr


# --- FiLM computation -----------------------------------------------------------------------------
def _generators(seed=0, channels=(3, 8, 5), dim=16):
    rng = np.random.default_rng(seed)
    sites, w1, b1, w2, b2, off = [], [], [], [], [], 0
    for c in channels:
        sites.append((off, c))
        off += 2 * c
        w1.append(rng.standard_normal((2 * c, dim)).astype(np.float32))
        b1.append(rng.standard_normal(2 * c).astype(np.float32))
        w2.append((rng.standard_normal((2 * c, 2 * c)) / np.sqrt(2 * c)).astype(np.float32))
        b2.append(rng.standard_normal(2 * c).astype(np.float32))
    return np.array(sites, np.int64), w1, b1, w2, b2, off


def _reference_film(lam, train, rows, gens):
    """docs/bundle.md's formula in float64 numpy."""
    sites, w1, b1, w2, b2, size = gens
    code = encode_lambdas([lam], train, rows)[0].astype(np.float64)
    leaky = lambda x: np.where(x >= 0, x, SLOPE * x)  # noqa: E731
    out = np.zeros(size)
    for k, (off, c) in enumerate(sites):
        z = leaky(w1[k].astype(np.float64) @ code + b1[k])
        out[off:off + 2 * c] = leaky(w2[k].astype(np.float64) @ z + b2[k])
    return out


def _computer(mod, train, rows, gens_per_width):
    comp = mod.FilmComputer(np.array(train, np.float64), rows, SLOPE)
    for g in gens_per_width:
        sites, w1, b1, w2, b2, size = g
        comp.add_width(sites, w1, b1, w2, b2, size)
    return comp


LAMS = [0.0, 0.05, 0.1, 0.15, 0.2999999, 0.3, 0.31, 0.4, 0.41, 0.7, 0.999, 1.0, 1e-12]


@pytest.mark.parametrize("impl", impl_params())
def test_film_computer_matches_reference_formula(impl):
    mod = load(impl)
    train = list(S1)
    rows = make_code_matrix(3, 16)[: len(train)]
    gens = [_generators(0), _generators(1, channels=(2, 4))]
    comp = _computer(mod, train, rows, gens)
    assert comp.num_widths == 2 and comp.film_size(0) == gens[0][5]
    for wi, g in enumerate(gens):
        for lam in LAMS:
            out = np.full(g[5] + 3, -7.0, np.float32)  # larger buffer: only the prefix is written
            comp.compute(lam, wi, out)
            np.testing.assert_allclose(out[: g[5]], _reference_film(lam, train, rows, g), rtol=1e-6, atol=1e-6)
            assert np.all(out[g[5]:] == -7.0)


@pytest.mark.parametrize("impl", impl_params())
def test_encode_is_bit_identical_to_lambda_code(impl):
    mod = load(impl)
    train = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
    rows = make_code_matrix(5, 32)[: len(train)]
    comp = mod.FilmComputer(np.array(train), rows, SLOPE)
    out = np.empty(32, np.float32)
    for lam in np.concatenate([np.linspace(0, 1, 201), LAMS]):
        comp.encode(float(lam), out)
        assert np.array_equal(out, encode_lambdas([lam], train, rows)[0]), lam


def test_film_ext_and_fallback_agree():
    if ext_import_error() is not None and not require_ext():
        pytest.skip("extension not built")
    train = list(S1)
    rows = make_code_matrix(0, 16)[: len(train)]
    gens = [_generators(7, channels=(16, 32, 64))]
    a, b = _computer(load("ext"), train, rows, gens), _computer(_fallback, train, rows, gens)
    worst = 0.0
    for lam in np.random.default_rng(0).random(200):
        x, y = np.empty(gens[0][5], np.float32), np.empty(gens[0][5], np.float32)
        a.compute(float(lam), 0, x)
        b.compute(float(lam), 0, y)
        worst = max(worst, float(np.abs(x - y).max()))
    assert worst <= 1e-6


@pytest.mark.parametrize("impl", impl_params())
def test_film_computer_rejects_inconsistent_generators(impl):
    mod = load(impl)
    rows = make_code_matrix(0, 16)[:6]
    comp = mod.FilmComputer(np.array(S1), rows, SLOPE)
    sites, w1, b1, w2, b2, size = _generators(0)
    with pytest.raises((ValueError, TypeError)):
        comp.add_width(sites, w1[:-1], b1, w2, b2, size)  # one generator missing
    bad = list(w2)
    bad[1] = np.zeros((3, 3), np.float32)
    with pytest.raises((ValueError, TypeError)):
        comp.add_width(sites, w1, b1, bad, b2, size)
    with pytest.raises((ValueError, TypeError)):
        comp.add_width(sites, w1, b1, w2, b2, size - 1)  # last site outside the vector
    with pytest.raises((ValueError, TypeError)):
        mod.FilmComputer(np.array(S1), rows[:5], SLOPE)  # one code row per training λ
    with pytest.raises((IndexError, ValueError)):
        comp.compute(0.5, 0, np.empty(4, np.float32))  # no width registered


# --- input range check -----------------------------------------------------------------------------
def _range_cases():
    rng = np.random.default_rng(0)
    base = rng.random((2, 1, 8, 8), dtype=np.float32)
    cases = [base, np.zeros((1, 3, 4, 4), np.float32), np.ones((1, 3, 4, 4), np.float32),
             np.array([-0.0, 1.0], np.float32), np.zeros((0,), np.float32), rng.random((64, 3, 32, 32), dtype=np.float32)]
    for value in (np.nan, np.inf, -np.inf, -1e-7, 1.0000001, 255.0):
        x = base.copy()
        x[1, 0, 3, 5] = value
        cases.append(x)
    return cases


@pytest.mark.parametrize("impl", impl_params())
def test_in_unit_range(impl):
    mod = load(impl)
    expected = [True, True, True, True, True, True, False, False, False, False, False, False]
    assert [mod.in_unit_range(x) for x in _range_cases()] == expected


# --- budget policy ------------------------------------------------------------------------------------
def _random_candidates(rng, n):
    lam = rng.choice([0.0, 0.1, 0.2, 0.3, 0.5, 1.0], n)
    width = rng.choice([0.5, 0.75, 1.0], n)
    sa = np.round(rng.random(n), 2)
    ra = np.round(rng.random(n) * 0.6, 2)  # rounded: ties happen and must break identically
    lat = np.round(rng.random(n) * 5, 1)
    sa[rng.random(n) < 0.1] = np.nan
    lat[rng.random(n) < 0.1] = np.nan
    return lam, width, sa, ra, lat


def test_select_mode_ext_equals_fallback():
    if ext_import_error() is not None and not require_ext():
        pytest.skip("extension not built")
    ext = load("ext")
    rng = np.random.default_rng(1)
    for _ in range(500):
        cols = _random_candidates(rng, int(rng.integers(1, 25)))
        budgets = [float(rng.random() * 0.6) if rng.random() < 0.5 else np.nan,
                   float(rng.random()) if rng.random() < 0.5 else np.nan,
                   float(rng.random() * 5) if rng.random() < 0.5 else np.nan]
        prefer = int(rng.integers(0, 3))
        a = ext.select_mode(*cols, *budgets, prefer, 3)
        b = _fallback.select_mode(*cols, *budgets, prefer, 3)
        assert (a[0], list(a[1])) == (b[0], list(b[1]))


# --- mode register ------------------------------------------------------------------------------------
def _register(mod, n_slots=4, stride=8, n_widths=1, film=None):
    ring = np.zeros((n_slots, stride), np.float32)
    return mod.ModeRegister(n_slots, ring, 100, n_widths, film), ring


@pytest.mark.parametrize("impl", impl_params())
def test_register_publish_acquire_release(impl):
    mod = load(impl)
    reg, _ = _register(mod)
    with pytest.raises(RuntimeError):
        reg.acquire()  # nothing published yet
    g1 = reg.publish(0.3, 0, 2, 17)
    slot, gen, path, film_id, lam, wi = reg.acquire()
    assert (gen, path, film_id, lam, wi) == (g1, 2, 17, 0.3, 0) and reg.pins(slot) == 1
    g2 = reg.publish(0.0, 0, 1, -1)
    assert g2 == g1 + 1 and reg.generation == g2
    assert reg.current() == (g2, 1, -1, 0.0, 0)
    assert reg.pins(slot) == 1  # the old record stays pinned until released
    reg.release(slot)
    assert reg.pins(slot) == 0
    with pytest.raises(RuntimeError):
        reg.release(slot)  # more releases than acquires
    with pytest.raises((IndexError, ValueError)):
        reg.pins(99)


@pytest.mark.parametrize("impl", impl_params())
def test_register_newest_request_wins_over_an_async_publish(impl):
    """Runtime(offgrid="async"): a vector computed on a worker is published only if no publish or
    reserve came after its ticket, so a slow worker never overwrites a newer mode."""
    mod = load(impl)
    rows = make_code_matrix(0, 16)[:6]
    gens = _generators(0, channels=(2, 2))
    comp = _computer(mod, list(S1), rows, [gens])
    reg, ring = _register(mod, n_slots=3, stride=gens[5], film=comp)
    vec = np.empty(gens[5], np.float32)
    comp.compute(0.123, 0, vec)

    t1 = reg.reserve()
    g = reg.publish_vector(t1, 0.123, 0, 4, vec)  # nothing came after t1: live
    assert g == reg.generation
    slot, _gen, path, film_id, lam, _wi = reg.acquire()
    assert (path, lam, film_id) == (4, 0.123, 100 + slot) and np.array_equal(ring[slot], vec)
    reg.release(slot)

    t2 = reg.reserve()
    reg.publish(0.5, 0, 1, 7)  # a synchronous switch after the request: the request is stale
    assert reg.publish_vector(t2, 0.123, 0, 4, vec) == 0
    assert reg.current()[1:] == (1, 7, 0.5, 0)

    t3 = reg.reserve()
    t4 = reg.reserve()  # two async requests: the older one loses whichever finishes first
    assert reg.publish_vector(t3, 0.3, 0, 4, vec) == 0
    assert reg.publish_vector(t4, 0.4, 0, 4, vec) > 0 and reg.current()[3] == 0.4
    with pytest.raises((ValueError, TypeError)):
        reg.publish_vector(reg.reserve(), 0.4, 0, 4, vec[:-1])  # not the width's vector size


@pytest.mark.parametrize("impl", impl_params())
def test_register_never_rewrites_a_pinned_ring_buffer(impl):
    mod = load(impl)
    rows = make_code_matrix(0, 16)[:6]
    gens = _generators(0, channels=(2, 2))
    comp = _computer(mod, list(S1), rows, [gens])
    reg, ring = _register(mod, n_slots=3, stride=gens[5], film=comp)
    reg.publish_computed(0.123, 0, 0)
    slot, _gen, _path, film_id, lam, _wi = reg.acquire()
    assert film_id == 100 + slot * 1 + 0  # ring_base + slot·n_widths + width
    pinned = ring[slot].copy()
    np.testing.assert_allclose(pinned, _reference_film(0.123, list(S1), rows, gens), atol=1e-6)
    for lam2 in np.linspace(0.5, 0.9, 30):  # many switches while one inference holds its buffer
        reg.publish_computed(float(lam2), 0, 0)
    assert np.array_equal(ring[slot], pinned)
    reg.release(slot)
    for lam2 in (0.6, 0.7, 0.8):  # once released, the ring reuses it
        reg.publish_computed(lam2, 0, 0)
    assert not np.array_equal(ring[slot], pinned)


@pytest.mark.parametrize("impl", impl_params())
def test_register_concurrent_readers_see_whole_records(impl):
    """Writers publish off-grid modes while readers pin and check their FiLM buffer against the
    reference vector of the record's own λ: a torn or overwritten buffer would mismatch."""
    mod = load(impl)
    rows = make_code_matrix(0, 16)[:6]
    gens = _generators(3, channels=(4, 4))
    comp = _computer(mod, list(S1), rows, [gens])
    reg, ring = _register(mod, n_slots=6, stride=gens[5], film=comp)
    lams = [round(0.011 + 0.037 * i, 4) for i in range(27)]
    ref = {lam: _reference_film(lam, list(S1), rows, gens) for lam in lams}
    reg.publish_computed(lams[0], 0, 0)
    stop, errors, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            slot, _g, _p, film_id, lam, _w = reg.acquire()
            try:
                buf = ring[(film_id - 100)].copy()
                for _ in range(50):  # hold the pin a while, re-reading the buffer
                    pass
                again = ring[(film_id - 100)].copy()
            finally:
                reg.release(slot)
            if not (np.allclose(buf, ref[lam], atol=1e-5) and np.array_equal(buf, again)):
                errors.append(lam)
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(0)
    for i in range(3000):
        reg.publish_computed(lams[int(rng.integers(len(lams)))], 0, 0)
    stop.set()
    for t in threads:
        t.join()
    assert reads[0] > 100 and errors == []
    assert all(reg.pins(s) == 0 for s in range(reg.n_slots))


@pytest.mark.parametrize("impl", impl_params())
def test_register_publish_allocates_no_buffer(impl):
    """Off-grid publishes compute into the ring: traced memory never grows by a FiLM vector
    (32 KB here) — only small Python objects come and go."""
    import tracemalloc

    mod = load(impl)
    rows = make_code_matrix(0, 16)[:6]
    gens = _generators(5, channels=(64,) * 64)
    comp = _computer(mod, list(S1), rows, [gens])
    reg, _ring = _register(mod, n_slots=4, stride=gens[5], film=comp)
    assert 4 * gens[5] == 32768
    for lam in (0.11, 0.22):
        reg.publish_computed(lam, 0, 0)
        reg.publish(lam, 0, 0, 3)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for i in range(200):
            reg.publish_computed(0.11 + 0.001 * i, 0, 0)
            reg.publish(0.3, 0, 1, 5)
            slot = reg.acquire()[0]
            reg.release(slot)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 4096, f"peak traced allocation {peak} B during set_mode-like publishes"
