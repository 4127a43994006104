"""Which file of a bundle runs a mode (docs/bundle.md "Modes → files") — the one place this
rule is written:

1. a baked path of exactly that mode (λ within ``LAMBDA_TOL``, same width, same BN branch as rule
   2 picks: a baked λ = 0 serves λ == 0 only), if there is one;
2. else the BN path of the width: BN_c for λ = 0, BN_a for λ > 0 (``mode.bn_branch``), fed
   the mode's FiLM vector.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from oat_edge.errors import BundleError, ModeError
from oat_edge.mode import bn_branch, check_lambda, fmt_width, same_lambda, width_index

BN_NAMES = {"c": "BN_c (λ = 0)", "a": "BN_a (λ > 0)"}


def _is_number(x) -> bool:
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
        self._film: Dict[Tuple[str, int], int] = {}
        self._baked: List[Tuple[float, int, int]] = []

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

    def add_path(self, bn: str, width, index: int, what: str) -> int:
        wi = self.width_index(width, what)
        if bn not in BN_NAMES or (bn, wi) in self._film:
            raise BundleError(f"manifest {what}: bn must be 'c' or 'a', one path per (bn, width)")
        self._film[(bn, wi)] = index
        return wi

    def add_baked(self, lam, width, index: int, what: str) -> Tuple[float, int]:
        wi = self.width_index(width, what)
        lam = check_lambda(lam)
        self._baked.append((lam, wi, index))
        return lam, wi

    def lookup(self, lam: float, wi: int) -> Tuple[Optional[int], str]:
        """(index or None, "baked" | "film") of the file that runs (λ, width index)."""
        for b_lam, b_wi, index in self._baked:
            # same BN branch as the plain rule too: λ = 1e-12 is a BN_a mode even with λ = 0 baked
            if b_wi == wi and same_lambda(b_lam, lam) and (b_lam == 0.0) == (lam == 0.0):
                return index, "baked"
        return self._film.get((bn_branch(lam), wi)), "film"

    def index(self, lam: float, wi: int) -> int:
        """Like ``lookup`` but ModeError when the bundle has no file for the mode."""
        index, _kind = self.lookup(lam, wi)
        if index is None:
            raise ModeError(f"this bundle has no {BN_NAMES[bn_branch(lam)]} path at width {fmt_width(self.widths[wi])}")
        return index

    @classmethod
    def from_manifest(cls, manifest: Dict[str, Any]) -> Tuple["ModeTable", List[Dict[str, Any]]]:
        """(table, entries): entries are the manifest's paths then baked paths, each with
        "kind" ("path" | "baked"), in the index order the table uses."""
        table = cls(manifest["model"]["widths"])
        entries: List[Dict[str, Any]] = []
        try:
            for e in manifest["paths"]:
                table.add_path(e["bn"], e["width"], len(entries), f"path {e['id']}")
                entries.append(dict(e, kind="path"))
            for e in manifest.get("baked") or []:
                table.add_baked(e["lam"], e["width"], len(entries), f"baked path {e['id']}")
                entries.append(dict(e, kind="baked"))
        except (KeyError, TypeError, ValueError) as e:  # (a bad λ is a ModeError, a ValueError too)
            raise BundleError(f"manifest has a malformed path entry: {e}") from None
        return table, entries


def select_entry(manifest: Dict[str, Any], lam, width) -> Dict[str, Any]:
    """The manifest entry that runs mode (λ, width); a copy with ``"kind": "baked" | "path"``."""
    from oat_edge.mode import match_width

    lam = check_lambda(lam)
    width = match_width(width, manifest["model"]["widths"])  # ModeError naming the trained widths
    table, entries = ModeTable.from_manifest(manifest)
    index, _kind = table.lookup(lam, table.width_index(width))
    if index is None:
        bn = bn_branch(lam)
        raise ModeError(f"the bundle has no {'BN_c' if bn == 'c' else 'BN_a'} path for width {fmt_width(width)}")
    return entries[index]
