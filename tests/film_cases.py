"""One shared list of FiLM site tables for ``FilmComputer.add_width``, malformed and valid, that
the C++ extension and its Python twin must judge alike (tests/test_film_twins.py), and that the
AddressSanitizer build of the extension runs through (tests/asan_film_check.py).

Each case: (name, sites [[offset, channels], ...], film_size, valid). Generator arrays are
built to match each site's channels where that is allocatable, so a refusal comes from the
bounds check and not from a shape mismatch; huge channels get 2-row arrays."""

from __future__ import annotations

import numpy as np

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
CODE_DIM = 4

CASES = [
    # name, sites, film_size, valid
    ("one site", [[0, 8]], 16, True),
    ("three sites", [[0, 3], [6, 8], [22, 5]], 32, True),
    ("site ends exactly at the end", [[10, 3]], 16, True),
    ("no sites, size 0", [], 0, True),
    ("offset wraps int64 (2**63-16)", [[2**63 - 16, 8]], 16, False),
    ("offset int64 max", [[I64_MAX, 1]], 16, False),
    ("offset int64 max - 1", [[I64_MAX - 1, 1]], 16, False),
    ("second site wraps", [[0, 4], [2**63 - 8, 4]], 16, False),
    ("offset int64 min", [[I64_MIN, 8]], 16, False),
    ("offset -1", [[-1, 8]], 16, False),
    ("offset past the end", [[17, 1]], 16, False),
    ("one past the end", [[9, 4]], 16, False),
    ("channels 0", [[0, 0]], 16, False),
    ("channels -1", [[0, -1]], 16, False),
    ("channels 2**62 (2C wraps to int64 min)", [[0, 2**62]], 16, False),
    ("channels int64 max", [[0, I64_MAX]], 16, False),
    ("channels int64 min + 1 (2C wraps to 2)", [[0, I64_MIN + 1]], 16, False),
    ("channels 2**63-8 at offset 16 (2C wraps)", [[16, 2**63 - 8]], 32, False),
    ("size negative, no sites", [], -1, False),
    ("size negative", [[0, 8]], -16, False),
    ("size int64 min", [[0, 1]], I64_MIN, False),
]


def generators(sites, code_dim: int = CODE_DIM, seed: int = 0):
    """fc1_w, fc1_b, fc2_w, fc2_b lists matching each site's channels (2 rows when 2C is not
    allocatable or not positive)."""
    rng = np.random.default_rng(seed)
    w1, b1, w2, b2 = [], [], [], []
    for _off, ch in sites:
        c2 = 2 * ch if 0 < ch <= 64 else 2
        w1.append(rng.standard_normal((c2, code_dim)).astype(np.float32))
        b1.append(rng.standard_normal(c2).astype(np.float32))
        w2.append((rng.standard_normal((c2, c2)) / np.sqrt(c2)).astype(np.float32))
        b2.append(rng.standard_normal(c2).astype(np.float32))
    return w1, b1, w2, b2


def computer(mod, code_dim: int = CODE_DIM, slope: float = 0.1):
    """A FilmComputer of ``mod`` (the extension or the fallback) on a 3-λ training set."""
    rows = np.random.default_rng(1).standard_normal((3, code_dim)).astype(np.float32)
    return mod.FilmComputer(np.array([0.0, 0.5, 1.0]), rows, slope)


def verdict(mod, sites, film_size):
    """("ok", film size) or (exception type name, message) for one add_width call."""
    comp = computer(mod)
    arr = np.array(sites, np.int64).reshape(-1, 2)
    try:
        idx = comp.add_width(arr, *generators(sites), film_size)
    except (ValueError, TypeError, OverflowError, IndexError) as e:
        return type(e).__name__, str(e)
    return "ok", comp.film_size(idx)
