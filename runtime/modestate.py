"""The mode a Runtime runs in, and everything that switching touches.

``ModeState`` owns the bundle's mode table (which path runs a mode, ``oat_edge.bundle.modes``),
the FiLM bank (``runtime/film.py``), the mode register (the published (path, FiLM buffer) that
each inference snapshots once; C++ extension or its Python twin), the set_mode caches, and the
workers a switch may wake: the off-grid worker (``offgrid="async"``) and the bakery (background
baking). ``set_mode`` and ``run`` are the hot path.

How a mode runs (docs/bundle.md "Modes → files"): a baked path when the bundle has one for
exactly that mode, else the BN path of the width (BN_c for λ = 0, BN_a otherwise) fed with the
mode's flat FiLM vector: a row of the preloaded table for λ on the grid, or computed exactly
into a ring buffer for any other λ. A ring buffer is never rewritten while an inference pins it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Dict, List, Optional

import numpy as np

from oat_edge.bundle.film import GRID_TOL
from oat_edge.bundle.modes import ModeTable
from oat_edge.errors import ModeError, OatEdgeError
from oat_edge.mode import Mode, bn_branch, check_lambda, fmt_width
from oat_edge.precision import DEFAULT as FP32, check_precision
from oat_edge.runtime.backends.base import PathSpec
from oat_edge.runtime.bakery import BakedModeGone, Bakery
from oat_edge.runtime.film import FilmBank, OffGridWorker

SWITCH_CACHE_SIZE = 4096  # grid/baked modes remembered by set_mode's fast path


class ModeState:
    """Mode table, FiLM bank, mode register and switch caches of one runtime; ``bakery`` and
    ``offgrid`` are set when background baking or asynchronous off-grid switching is on."""

    def __init__(self, paths: List[PathSpec], table: ModeTable, film: FilmBank, impl: ModuleType, ring_slots: int):
        self.paths = paths
        self.table = table
        self.film = film
        self.widths: List[float] = table.widths
        self.views = film.views
        self.reg = impl.ModeRegister(ring_slots, film.ring, film.ring_base, len(self.widths), film.computer)
        self.bakery: Optional[Bakery] = None
        self.offgrid: Optional[OffGridWorker] = None
        self._switch_cache: Dict[tuple, tuple] = {}  # set_mode arguments -> publish arguments (grid and baked modes)
        self._offgrid_widths: Dict[tuple, tuple] = {}  # (width, precision) arguments -> BN_a path (async off-grid)

    def start_offgrid(self) -> OffGridWorker:
        """Off-grid λ computed on a worker thread; a published one is handed to the bakery."""
        bakery = self.bakery
        on_live = None if bakery is None else (lambda lam, wi, index: bakery.request((index, lam, wi), lam, wi, index))
        self.offgrid = OffGridWorker(self.film, self.reg, on_live)
        return self.offgrid

    # --- switching ----------------------------------------------------------------------------
    def set_mode(self, lam, width=None, precision: Optional[str] = None) -> None:
        """``Runtime.set_mode`` (see there)."""
        # Fast path: a grid or baked mode seen before is one dict lookup and the publish. Few
        # Python steps matter most when the caches are cold (after an inference swept them).
        key = (type(lam), lam, type(width), width, precision)
        try:
            hit = self._switch_cache.get(key)
        except TypeError:  # an unhashable argument: the full path below raises the clear error
            hit = None
        if hit is not None:
            self.reg.publish(*hit)
            bakery = self.bakery
            if bakery is not None and hit[3] >= 0:
                # Bakery.request's hit branch, inlined on the bakery's lock-free attributes: a
                # Python call frame is the dearest step here when a bake runs on the other core.
                bake_key = (hit[2], hit[3])
                entry = bakery.cache.get(bake_key)
                if entry is None:
                    bakery.request(bake_key, *hit[:3])
                else:
                    entry.tick = next(bakery.clock)
                    next(bakery.hits)
            return
        if self.offgrid is not None and type(lam) is float and 0.0 < lam <= 1.0:
            # The same for an asynchronous off-grid λ at a width seen before: (width index, BN_a
            # path, that width's baked λ) from the cache. A λ near a baked or grid one takes the
            # full path below (conservative: no rule of ModeTable.lookup is re-implemented).
            w = self._offgrid_widths.get((type(width), width, precision))
            if w is not None and not any(abs(lam - b) <= GRID_TOL for b in w[2]) and self.film.grid_row(lam) is None:
                self.offgrid.request(self.reg.reserve(), lam, w[0], w[1])
                return
        self._switch(key, lam, width, precision)

    def _resolve(self, lam, width, precision: Optional[str]) -> tuple:
        """(λ, width index, precision, path index, kind) of a mode given as (λ, width) or a Mode."""
        if width is None and isinstance(lam, Mode):
            lam, width, precision = lam.lam, lam.width, lam.precision if precision is None else precision
        lam = check_lambda(lam)
        precision = FP32 if precision is None else check_precision(precision)
        wi = self.width_index(width)
        index, kind = self.table.lookup(lam, wi, precision)
        return lam, wi, precision, index, kind

    def _switch(self, key: tuple, lam, width, precision: Optional[str]) -> None:
        """set_mode for a mode the fast path has not seen: check it, find its path and publish."""
        lam, wi, precision, index, kind = self._resolve(lam, width, precision)
        if kind == "baked":
            self.reg.publish(lam, wi, index, -1)
            self._remember_switch(key, (lam, wi, index, -1))
            return
        if index is None:
            self.table.index(lam, wi, precision)  # raises the ModeError naming the missing BN path
        row = self.film.grid_row(lam)
        if row is not None:
            film_id = self.film.row_id(wi, row)
            self.reg.publish(lam, wi, index, film_id)
            if self.bakery is not None:
                self.bakery.request((index, film_id), lam, wi, index)
            self._remember_switch(key, (lam, wi, index, film_id))
        elif self.offgrid is not None:
            self.offgrid.request(self.reg.reserve(), lam, wi, index)  # live once computed (wait_mode)
            if lam > 0.0 and len(self._offgrid_widths) < SWITCH_CACHE_SIZE:
                try:
                    self._offgrid_widths[key[2:]] = (wi, index, self.table.baked_lambdas(wi, precision))
                except TypeError:
                    pass
        else:
            self.reg.publish_computed(lam, wi, index)
            if self.bakery is not None:
                self.bakery.request((index, lam, wi), lam, wi, index)

    def _remember_switch(self, key, publish_args) -> None:
        """Grid and baked modes only (off-grid λ compute a vector each time); bounded because
        λ within GRID_TOL of a grid value are distinct keys of one mode."""
        try:
            if len(self._switch_cache) < SWITCH_CACHE_SIZE:
                self._switch_cache[key] = publish_args
        except TypeError:
            pass

    def wait_mode(self, timeout: Optional[float]) -> bool:
        return True if self.offgrid is None else self.offgrid.wait(timeout)

    @property
    def mode_pending(self) -> bool:
        return self.offgrid is not None and self.offgrid.pending

    def offgrid_stats(self) -> dict:
        return {} if self.offgrid is None else self.offgrid.stats()

    # --- inference ----------------------------------------------------------------------------
    def run(self, backend, x: np.ndarray):
        """(logits, λ, width index, path index) of validated host images in the mode published
        now, snapshotted once: on its baked graph when the bakery has one, else on its path."""
        slot, _gen, path, film_id, lam, wi = self.reg.acquire()
        try:
            out = None
            bakery = self.bakery
            if film_id >= 0 and bakery is not None:  # (Bakery.lookup, inlined like set_mode's hit)
                baked = bakery.cache.get((path, film_id) if film_id < self.film.ring_base else (path, lam, wi))
                if baked is not None:
                    baked.tick = next(bakery.clock)
                    try:
                        out = baked.run(x)
                    except BakedModeGone:  # its engine copy was refitted for another mode meanwhile
                        bakery.discard(baked)
            if out is None:
                out = backend.run(path, x, self.views[film_id] if film_id >= 0 else None)
        finally:
            self.reg.release(slot)
        return out, lam, wi, path

    def run_cuda(self, backend, x):
        """``run`` for a validated CUDA tensor (the FiLM-as-input path; baked graphs take host arrays)."""
        slot, _gen, path, film_id, lam, wi = self.reg.acquire()
        try:
            out = backend.run_cuda(path, x, self.views[film_id] if film_id >= 0 else None)
        finally:
            self.reg.release(slot)
        return out, lam, wi, path

    # --- queries ------------------------------------------------------------------------------
    def width_index(self, width, what: str = "") -> int:
        return self.table.width_index(width, what)

    def mode_of(self, lam: float, wi: int, path: int) -> Mode:
        return Mode(lam, self.widths[wi], self.paths[path].precision)

    @property
    def mode(self) -> Mode:
        _gen, path, _film, lam, wi = self.reg.current()
        return self.mode_of(lam, wi, path)

    def path_for(self, lam, width, precision: str = FP32) -> str:
        lam, wi = check_lambda(lam), self.width_index(width)
        index, _kind = self.table.lookup(lam, wi, check_precision(precision))
        if index is None:
            raise ModeError(f"this bundle has no path for {Mode(lam, self.widths[wi], precision)}")
        return self.paths[index].id

    def film_vector(self, lam, width) -> np.ndarray:
        return self.film.vector(check_lambda(lam), self.width_index(width))

    def film_path_index(self, lam: float, wi: int) -> int:
        """The BN path a mode's FiLM vector is fed to (what baking folds it into)."""
        bn = bn_branch(lam)
        for p in self.paths:
            if p.has_film and p.bn == bn and p.width == self.widths[wi]:
                return p.index
        raise ModeError(f"this bundle has no BN_{bn} path for width {fmt_width(self.widths[wi])}")

    # --- baking keys --------------------------------------------------------------------------
    def bake_key(self, lam: float, wi: int, film_id: int, path: int):
        """Cache key of a FiLM-path mode: the path it bakes (which fixes the BN branch, width
        and precision) and its grid row id, or (λ, width index) off the grid."""
        return (path, film_id) if film_id < self.film.ring_base else (path, lam, wi)

    def held_bake_key(self):
        """The bake key of the mode published now (None for a baked path)."""
        _gen, path, film_id, lam, wi = self.reg.current()
        return self.bake_key(lam, wi, film_id, path) if film_id >= 0 else None

    def mode_bake_key(self, lam, width, precision):
        """(λ, width index, path index, cache key) of a FiLM-path mode, or None for a baked or
        missing path."""
        lam, wi, precision, index, kind = self._resolve(lam, width, precision)
        if kind == "baked" or index is None:
            return None
        row = self.film.grid_row(lam)
        return lam, wi, index, ((index, self.film.row_id(wi, row)) if row is not None else (index, lam, wi))

    def bake_now(self, lam, width, precision) -> bool:
        """``Runtime.bake``: bake a FiLM-path mode on the calling thread; True once it is cached."""
        found = self.mode_bake_key(lam, width, precision)
        if self.bakery is None or found is None:
            return False
        lam, wi, index, key = found
        try:
            self.bakery.bake(key, lam, wi, index)
        except OatEdgeError:
            return False
        return True

    def wait_baked(self, lam, width, timeout: Optional[float], precision: Optional[str]) -> bool:
        """``Runtime.wait_baked``: an exported baked path at once, else the bakery's verdict."""
        found = self.mode_bake_key(lam, width, precision)
        if found is None:
            lam, wi = check_lambda(lam), self.width_index(width)
            return self.table.lookup(lam, wi, FP32 if precision is None else check_precision(precision))[1] == "baked"
        return self.bakery is not None and self.bakery.wait(found[3], timeout)

    def baked_now(self) -> bool:
        _gen, path, film_id, lam, wi = self.reg.current()
        if film_id < 0:
            return True
        return self.bakery is not None and self.bakery.lookup(self.bake_key(lam, wi, film_id, path)) is not None

    def close(self) -> None:
        if self.offgrid is not None:
            self.offgrid.close()
        if self.bakery is not None:
            self.bakery.close()
