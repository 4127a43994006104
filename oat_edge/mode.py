"""Mode semantics shared by every stage (docs/bundle.md "Modes → files").

A mode is (λ, width). λ ∈ [0, 1]; λ == 0 selects the clean batch norm (BN_c), λ > 0 the
adversarial one (BN_a). width must be one of the widths the model was trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from oat_edge.errors import ModeError

# Widths are compared with a tolerance so that 0.75 typed on a CLI matches 0.75 stored as
# float32 in a file.
WIDTH_TOL = 1e-6
# λ values closer than this are the same λ: a λ within LAMBDA_TOL of a FiLM-grid value takes
# that table row, of a baked mode's λ runs that baked path (docs/bundle.md).
LAMBDA_TOL = 1e-9


def same_width(a, b) -> bool:
    return abs(float(a) - float(b)) <= WIDTH_TOL


def same_lambda(a, b) -> bool:
    return abs(float(a) - float(b)) <= LAMBDA_TOL


def check_lambda(lam) -> float:
    """Return λ as a float, or raise ModeError if it is not a finite number in [0, 1] (text and
    booleans are not numbers here, though float() would take them)."""
    if isinstance(lam, (str, bytes, bool, np.bool_)):
        raise ModeError(f"λ must be a number in [0, 1], got {lam!r}")
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ModeError(f"λ must be a number in [0, 1], got {lam!r}") from None
    if not math.isfinite(value) or value < 0.0 or value > 1.0:
        raise ModeError(f"λ must be in [0, 1], got {lam!r}")
    return value


def width_index(width, widths: Sequence[float]) -> int:
    """Index of ``width`` in ``widths`` (within WIDTH_TOL), or ModeError naming the widths that
    exist. Cheap: the runtime calls it on every mode switch."""
    if isinstance(width, (str, bytes, bool, np.bool_)):
        raise ModeError(f"width must be a number, got {width!r}")
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise ModeError(f"width must be a number, got {width!r}") from None
    for i, w in enumerate(widths):
        if abs(float(w) - value) <= WIDTH_TOL:
            return i
    trained = ", ".join(f"{float(w):g}" for w in widths)
    raise ModeError(f"width {width!r} was never trained; trained widths: {trained}")


def match_width(width, widths: Sequence[float]) -> float:
    """Return the trained width equal to ``width`` (within tolerance), or raise ModeError
    naming the widths that exist."""
    return float(widths[width_index(width, widths)])


def bn_branch(lam: float) -> str:
    """'c' for λ == 0 (clean BN), 'a' for λ > 0 (adversarial BN)."""
    return "c" if float(lam) == 0.0 else "a"


def fmt_width(width: float) -> str:
    """Canonical text of a width in file names and ids: 0.5 -> '0.5', 1.0 -> '1'."""
    return f"{float(width):g}"


@dataclass(frozen=True)
class Mode:
    """An operating point of an OAT/OATS model. Immutable, hashable, cheap."""

    lam: float
    width: float
    precision: str = "fp32"  # "fp32" | "fp16" | "int8" (oat_edge.precision)

    def __post_init__(self):
        from oat_edge.precision import check_precision

        object.__setattr__(self, "lam", check_lambda(self.lam))
        object.__setattr__(self, "precision", check_precision(self.precision))
        try:
            w = float(self.width)
        except (TypeError, ValueError):
            raise ModeError(f"width must be a number, got {self.width!r}") from None
        if not math.isfinite(w) or not 0.0 < w <= 1.0:
            raise ModeError(f"width must be in (0, 1], got {self.width!r}")
        object.__setattr__(self, "width", w)

    @property
    def bn(self) -> str:
        return bn_branch(self.lam)

    def __str__(self) -> str:
        extra = "" if self.precision == "fp32" else f", {self.precision}"
        return f"(λ={self.lam:g}, width={self.width:g}{extra})"
