"""Names in a bundle (docs/bundle.md): the schema id, the fixed file names, and the ids of the
files that run a mode. Imports nothing of the bundle package, so every module of it can use
these."""

from __future__ import annotations

from oat_edge.mode import fmt_width
from oat_edge.precision import suffix

SCHEMA = "oat-edge/bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
FILM_FILE = "film.npz"
PARITY_FILE = "parity.npz"
LATENCY_DIR = "latency"


def path_id(bn: str, width: float, precision: str = "fp32") -> str:
    """Id of the FiLM path of BN branch ``bn`` at ``width`` (e.g. ``a_w0.5``, ``c_w1_fp16``)."""
    return f"{bn}_w{fmt_width(width)}{suffix(precision)}"


def baked_id(lam: float, width: float, precision: str = "fp32") -> str:
    """Id of the baked path of mode (λ, width) (e.g. ``lam0.4_w1``)."""
    return f"lam{float(lam):g}_w{fmt_width(width)}{suffix(precision)}"


def parity_key(entry_id: str, lam: float) -> str:
    """Key in parity.npz of the export-time logits of entry ``entry_id`` at λ."""
    return f"logits__{entry_id}__lam{float(lam):g}"
