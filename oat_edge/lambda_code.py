"""The λ code: how a robustness level λ becomes the FiLM generators' input.

numpy only, because the runtime computes codes for off-grid λ without torch; training, eval,
export and runtime all call ``encode_lambdas`` so a λ means the same thing everywhere.

- A fixed random orthogonal d×d matrix is drawn once from a seed (stored in the checkpoint
  with the matrix itself, never regenerated on load or resume).
- The i-th smallest training λ gets row i.
- Any other λ ∈ [0, 1] gets the piecewise-linear interpolation between the codes of its two
  neighbouring training λ values; below the smallest / above the largest training λ it gets
  that end's code (constant extrapolation). The map is continuous and deterministic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from oat_edge.errors import ModeError

DEFAULT_CODE_DIM = 128
# Paper's training set S1 and the unseen set S3 (Wang et al. 2020).
S1 = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)
S3_UNSEEN = (0.15, 0.25, 0.35, 0.5, 0.7, 0.9)


def make_code_matrix(seed: int, dim: int = DEFAULT_CODE_DIM) -> np.ndarray:
    """A d×d orthogonal float32 matrix drawn from ``seed`` (QR of a Gaussian, signs fixed so
    the result is unique for a given draw)."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))[None, :]
    return q.astype(np.float32)


def check_train_lambdas(train_lambdas: Sequence[float], dim: int = DEFAULT_CODE_DIM) -> list[float]:
    """Sorted, unique, each in [0, 1], at most ``dim`` of them."""
    values = sorted({float(x) for x in train_lambdas})
    if not values:
        raise ModeError("the training λ set is empty")
    bad = [x for x in values if not (0.0 <= x <= 1.0)]
    if bad:
        raise ModeError(f"training λ values must lie in [0, 1], got {bad}")
    if len(values) > dim:
        raise ModeError(f"{len(values)} training λ values need a code dimension ≥ {len(values)}, got {dim}")
    return values


def interp_weights(lams, train_lambdas: Sequence[float]):
    """For each λ: (index of lower neighbour, index of upper neighbour, weight of upper).

    code(λ) = (1 - t) · row[lo] + t · row[hi]. λ must already be validated to [0, 1].
    """
    grid = np.asarray(train_lambdas, dtype=np.float64)
    x = np.atleast_1d(np.asarray(lams, dtype=np.float64))
    if not np.all(np.isfinite(x)) or np.any(x < 0.0) or np.any(x > 1.0):
        raise ModeError(f"λ must be in [0, 1], got {x[~((x >= 0) & (x <= 1))][:5].tolist()}")
    last = len(grid) - 1
    hi = np.clip(np.searchsorted(grid, x, side="left"), 0, last)
    lo = np.clip(hi - 1, 0, last)
    # One row, weight 0 on the other: exact hits, and the constant ends.
    single = (grid[hi] == x) | (x <= grid[0]) | (x >= grid[-1])
    hi = np.where(x <= grid[0], 0, np.where(x >= grid[-1], last, hi))
    lo = np.where(single, hi, lo)
    span = np.where(single, 1.0, grid[hi] - grid[lo])
    t = np.where(single, 0.0, (x - grid[lo]) / span)
    return lo.astype(np.int64), hi.astype(np.int64), t.astype(np.float64)


def encode_lambdas(lams, train_lambdas: Sequence[float], code_rows: np.ndarray) -> np.ndarray:
    """Codes [N, d] (float32) for λ values, from the rows of the training λ set
    (``code_rows[i]`` is the code of the i-th smallest training λ)."""
    lo, hi, t = interp_weights(lams, train_lambdas)
    rows = np.asarray(code_rows, dtype=np.float64)
    codes = (1.0 - t)[:, None] * rows[lo] + t[:, None] * rows[hi]
    return codes.astype(np.float32)
