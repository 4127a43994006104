"""Run the C++ FiLM computer of an AddressSanitizer build of the extension over malformed site
tables (tests/film_cases.py, then random tables of edge values) and compare each verdict with
the Python twin. Accepted tables are computed into buffers of exactly their size, so a write
outside them is an ASan report (the process dies with a non-zero status).

Usage (tests/test_film_twins.py does this): LD_PRELOAD=libasan.so python asan_film_check.py BUILD_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, sys.argv[1])  # the ASan build of _ext comes first

import _ext  # noqa: E402

from film_cases import CASES, I64_MAX, I64_MIN, computer, generators  # noqa: E402
from oat_edge.runtime import _fallback  # noqa: E402

EDGES = [0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, -1, -2, -16, 2**31, 2**32, 2**62, 2**62 + 1, 2**63 - 16,
         2**63 - 8, 2**63 - 2, I64_MAX, I64_MIN, I64_MIN + 1, -(2**62)]


def run(sites, film_size):
    """Verdicts of both twins; computes accepted tables into exact-size buffers."""
    out = []
    arr = np.array(sites, np.int64).reshape(-1, 2)
    for mod in (_ext, _fallback):
        comp = computer(mod)
        try:
            idx = comp.add_width(arr, *generators(sites), film_size)
        except (ValueError, TypeError, OverflowError, IndexError) as e:
            out.append((type(e).__name__, str(e), None))
            continue
        vec = np.zeros(film_size, np.float32)  # exactly the width's size: ASan's redzones follow
        for lam in (0.1, 0.7):
            comp.compute(lam, idx, vec)
        out.append(("ok", comp.film_size(idx), vec))
    (a, b) = out
    if a[:2] != b[:2]:
        raise SystemExit(f"twins disagree on sites={sites} film_size={film_size}: ext {a[:2]}, python {b[:2]}")
    if a[2] is not None and not np.allclose(a[2], b[2], rtol=1e-5, atol=1e-5):
        raise SystemExit(f"twins compute different vectors for sites={sites} film_size={film_size}")
    return a[0] == "ok"


def main() -> None:
    accepted = refused = 0
    for name, sites, film_size, valid in CASES:
        ok = run(sites, film_size)
        if ok != valid:
            raise SystemExit(f"case {name!r}: {'accepted' if ok else 'refused'}, expected the opposite")
        accepted, refused = accepted + ok, refused + (not ok)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n = int(rng.integers(1, 4))
        sites = [[int(rng.choice(EDGES)), int(rng.choice(EDGES))] for _ in range(n)]
        film_size = int(rng.choice([0, 1, 16, 17, 32, 64, -1, I64_MIN, I64_MAX]))
        if film_size > 4096:  # allocatable buffers only (no site can fill more than it)
            film_size = 64
        ok = run(sites, film_size)
        accepted, refused = accepted + ok, refused + (not ok)
    print(f"asan film check: {accepted} accepted, {refused} refused, twins agree, no ASan report")


if __name__ == "__main__":
    main()
