"""Which file of a bundle runs a mode (docs/bundle.md "Modes → files") — the one place this
rule is written:

1. a baked path of exactly that mode (λ within ``LAMBDA_TOL``, same width, same BN branch as rule
   2 picks: a baked λ = 0 serves λ == 0 only), if there is one;
2. else the BN path of the width: BN_c for λ = 0, BN_a for λ > 0 (``mode.bn_branch``), fed
   the mode's FiLM vector.

Both rules apply within one precision (``oat_edge.precision``; an entry without one is fp32):
an int8 mode runs an int8 baked path or the int8 BN path, never a file of another precision.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from oat_edge.errors import BundleError, ModeError
from oat_edge.mode import bn_branch, check_lambda, fmt_width, same_lambda, width_index
from oat_edge.precision import entry_precision

BN_NAMES = {"c": "BN_c (λ = 0)", "a": "BN_a (λ > 0)"}


def _is_number(x) -> bool:
    if isinstance(x, (str, bytes, bool)):
        return False
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


class ModeTable:
    """The mode -> file rule over one bundle's files, by integer index (the runtime's path
    order). ``lookup`` is on the runtime's hot path: a short scan of the baked modes and a dict
    lookup, no allocation beyond the result tuple."""

    def __init__(self, widths: Sequence[float]):
        self.widths: List[float] = [float(w) for w in widths]
        self._film: Dict[Tuple[str, int, str], int] = {}
        self._baked: List[Tuple[float, int, str, int]] = []
        self.precisions: List[str] = []  # those with at least one file, in PRECISIONS order

    def width_index(self, width, what: str = "") -> int:
        """Index of ``width`` among the bundle's widths (the lookup is ``mode.width_index``; a
        bundle may hold fewer widths than were trained, so the errors name the bundle's):
        ModeError for a width the caller asked for, BundleError naming ``what`` for a manifest
        entry with a width the model lacks."""
        try:
            return width_index(width, self.widths)
        except ModeError:
            if not _is_number(width):
                raise  # "width must be a number"
            listed = ", ".join(fmt_width(x) for x in self.widths)
            if what:
                raise BundleError(f"{what} has width {width!r}, which the bundle's model does not list ({listed})") from None
            raise ModeError(f"width {width!r} is not in this bundle; its widths are {listed}") from None

    def _note_precision(self, precision: str, what: str) -> str:
        from oat_edge.precision import PRECISIONS

        if precision not in PRECISIONS:
            raise BundleError(f"manifest {what}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision not in self.precisions:
            self.precisions = [p for p in PRECISIONS if p in self.precisions or p == precision]
        return precision

    def add_path(self, bn: str, width, index: int, what: str, precision: str = "fp32") -> int:
        wi = self.width_index(width, what)
        precision = self._note_precision(precision, what)
        if bn not in BN_NAMES or (bn, wi, precision) in self._film:
            raise BundleError(f"manifest {what}: bn must be 'c' or 'a', one path per (bn, width, precision)")
        self._film[(bn, wi, precision)] = index
        return wi

    def add_baked(self, lam, width, index: int, what: str, precision: str = "fp32") -> Tuple[float, int]:
        wi = self.width_index(width, what)
        lam = check_lambda(lam)
        self._baked.append((lam, wi, self._note_precision(precision, what), index))
        return lam, wi

    def lookup(self, lam: float, wi: int, precision: str = "fp32") -> Tuple[Optional[int], str]:
        """(index or None, "baked" | "film") of the file that runs (λ, width index, precision)."""
        for b_lam, b_wi, b_prec, index in self._baked:
            # same BN branch as the plain rule too: λ = 1e-12 is a BN_a mode even with λ = 0 baked
            if b_wi == wi and b_prec == precision and same_lambda(b_lam, lam) and (b_lam == 0.0) == (lam == 0.0):
                return index, "baked"
        return self._film.get((bn_branch(lam), wi, precision)), "film"

    def baked_lambdas(self, wi: int, precision: str = "fp32") -> Tuple[float, ...]:
        """The λ values with a baked file at width index ``wi`` and ``precision``."""
        return tuple(b_lam for b_lam, b_wi, b_prec, _index in self._baked if b_wi == wi and b_prec == precision)

    def index(self, lam: float, wi: int, precision: str = "fp32") -> int:
        """Like ``lookup`` but ModeError when the bundle has no file for the mode."""
        index, _kind = self.lookup(lam, wi, precision)
        if index is None:
            what = "" if precision == "fp32" else f"{precision} "
            have = "" if precision in self.precisions else f" (its precisions: {', '.join(self.precisions)})"
            raise ModeError(f"this bundle has no {what}{BN_NAMES[bn_branch(lam)]} path at width "
                            f"{fmt_width(self.widths[wi])}{have}")
        return index

    @classmethod
    def from_manifest(cls, manifest: Dict[str, Any]) -> Tuple["ModeTable", List[Dict[str, Any]]]:
        """(table, entries): entries are the manifest's paths then baked paths, each with
        "kind" ("path" | "baked"), in the index order the table uses."""
        table = cls(manifest["model"]["widths"])
        entries: List[Dict[str, Any]] = []
        try:
            for e in manifest["paths"]:
                table.add_path(e["bn"], e["width"], len(entries), f"path {e['id']}", entry_precision(e))
                entries.append(dict(e, kind="path"))
            for e in manifest.get("baked") or []:
                table.add_baked(e["lam"], e["width"], len(entries), f"baked path {e['id']}", entry_precision(e))
                entries.append(dict(e, kind="baked"))
        except (KeyError, TypeError, ValueError) as e:  # (a bad λ is a ModeError, a ValueError too)
            raise BundleError(f"manifest has a malformed path entry: {e}") from None
        return table, entries


def select_entry(manifest: Dict[str, Any], lam, width, precision: str = "fp32") -> Dict[str, Any]:
    """The manifest entry that runs mode (λ, width, precision); a copy with ``"kind": "baked" | "path"``."""
    from oat_edge.mode import match_width
    from oat_edge.precision import check_precision

    lam = check_lambda(lam)
    precision = check_precision(precision)
    width = match_width(width, manifest["model"]["widths"])  # ModeError naming the trained widths
    table, entries = ModeTable.from_manifest(manifest)
    return entries[table.index(lam, table.width_index(width), precision)]
