"""The λ code: how a robustness level λ becomes the FiLM generators' input.

numpy only, because the runtime computes codes for off-grid λ without torch; training, eval,
export and runtime all call ``encode_lambdas`` so a λ means the same thing everywhere.

- A fixed random orthogonal d×d matrix is drawn once from a seed (stored in the checkpoint
  with the matrix itself, never regenerated on load or resume).
- The i-th smallest training λ gets row i.
- Any other λ ∈ [0, 1] gets a blend of the codes of its two neighbouring training λ values;
  below the smallest / above the largest training λ it gets that end's code (constant
  extrapolation). The map is continuous and deterministic.

Three encodings (``LAMBDA_ENCODINGS``, the model kwarg ``lambda_encoding``):

- ``"ro"`` (default, the paper's): the blend is linear, (1 − t)·row[lo] + t·row[hi]. Between two
  orthonormal rows its norm dips to 1/√2 at the midpoint, so an unseen λ gets a code shorter than
  any the generators were trained on.
- ``"ro-slerp"``: spherical linear interpolation, sin((1 − t)Ω)/sin Ω·row[lo] + sin(tΩ)/sin Ω·row[hi]
  with Ω the angle between the rows (π/2 for distinct rows of an orthogonal matrix), so every code
  has the norm of the training codes.
- ``"scalar"``: no code matrix: λ is fed directly, code = [λ] (dimension 1); any λ is its own code.
"""

from __future__ import annotations

from typing import Sequence

import math

import numpy as np

from oat_edge.errors import ConfigError, ModeError

DEFAULT_CODE_DIM = 128
# Paper's training set S1 and the unseen set S3 (Wang et al. 2020).
S1 = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)
S3_UNSEEN = (0.15, 0.25, 0.35, 0.5, 0.7, 0.9)
DEFAULT_ENCODING = "ro"
LAMBDA_ENCODINGS = ("ro", "ro-slerp", "scalar")


def check_encoding(name) -> str:
    """The encoding name, or ConfigError naming the known ones."""
    if not isinstance(name, str) or name not in LAMBDA_ENCODINGS:
        raise ConfigError(f"lambda_encoding must be one of {', '.join(LAMBDA_ENCODINGS)}; got {name!r}")
    return name


def encoding_code_dim(encoding: str, code_dim: int) -> int:
    """The code's dimension under an encoding: ``code_dim`` for the RO codes, 1 for "scalar"."""
    return 1 if check_encoding(encoding) == "scalar" else int(code_dim)


def make_code_matrix(seed: int, dim: int = DEFAULT_CODE_DIM) -> np.ndarray:
    """A d×d orthogonal float32 matrix drawn from ``seed`` (QR of a Gaussian, signs fixed so
    the result is unique for a given draw)."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))[None, :]
    return q.astype(np.float32)


def check_train_lambdas(train_lambdas: Sequence[float], dim: int | None = DEFAULT_CODE_DIM) -> list[float]:
    """Sorted, unique, each in [0, 1], at most ``dim`` of them (no limit when ``dim`` is None:
    the scalar encoding gives every λ its own code)."""
    values = sorted({float(x) for x in train_lambdas})
    if not values:
        raise ModeError("the training λ set is empty")
    bad = [x for x in values if not (0.0 <= x <= 1.0)]
    if bad:
        raise ModeError(f"training λ values must lie in [0, 1], got {bad}")
    if dim is not None and len(values) > dim:
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


def slerp_angle(a, b) -> float:
    """The angle Ω between two code rows (float64), 0 when either is zero. The runtime's C++
    computer does the same float64 arithmetic with the same libm calls."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = math.sqrt(float(a @ a)), math.sqrt(float(b @ b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return math.acos(max(-1.0, min(1.0, float(a @ b) / (na * nb))))


def slerp_weights(omega: float, t: float) -> tuple[float, float]:
    """(weight of the lower row, weight of the upper row) at fraction t along an arc of angle Ω;
    the linear weights where sin Ω ≈ 0 ((anti)parallel rows: no unique arc)."""
    s = math.sin(omega)
    if t == 0.0 or s < 1e-12:
        return 1.0 - t, t
    return math.sin((1.0 - t) * omega) / s, math.sin(t * omega) / s


def blend_weights(lams, train_lambdas: Sequence[float], code_rows, encoding: str = DEFAULT_ENCODING):
    """For each λ: (lower row index, upper row index, weight of lower, weight of upper), float64;
    code(λ) = w_lo·row[lo] + w_hi·row[hi] for the "ro" and "ro-slerp" encodings."""
    lo, hi, t = interp_weights(lams, train_lambdas)
    if check_encoding(encoding) != "ro-slerp":
        return lo, hi, 1.0 - t, t
    rows = np.asarray(code_rows, dtype=np.float32)  # the angle of the stored float32 rows
    w = np.array([slerp_weights(slerp_angle(rows[i], rows[j]), float(f)) for i, j, f in zip(lo, hi, t)],
                 dtype=np.float64)
    w = w.reshape(-1, 2)
    return lo, hi, w[:, 0], w[:, 1]


def encode_lambdas(lams, train_lambdas: Sequence[float], code_rows: np.ndarray,
                   encoding: str = DEFAULT_ENCODING) -> np.ndarray:
    """Codes [N, d] (float32) for λ values under an encoding, from the rows of the training λ
    set (``code_rows[i]`` is the code of the i-th smallest training λ; unused by "scalar")."""
    if check_encoding(encoding) == "scalar":
        _, _, _ = interp_weights(lams, train_lambdas)  # validates λ ∈ [0, 1]
        return np.atleast_1d(np.asarray(lams, dtype=np.float64)).reshape(-1, 1).astype(np.float32)
    lo, hi, w_lo, w_hi = blend_weights(lams, train_lambdas, code_rows, encoding)
    rows = np.asarray(code_rows, dtype=np.float64)
    codes = w_lo[:, None] * rows[lo] + w_hi[:, None] * rows[hi]
    return codes.astype(np.float32)
