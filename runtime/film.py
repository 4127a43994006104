"""The bundle's FiLM tables (``film.npz``, docs/bundle.md) as the runtime uses them.

Every FiLM vector an inference can read is a preallocated numpy array with an integer id:
- ids ``row_base[w] + g``: row g of ``table_w{w}`` (λ on the grid: a lookup, nothing computed);
- ids ``ring_base + slot·n_widths + w``: the ring of buffers that off-grid λ are computed into
  (exactly: code interpolation + each site's two-layer leaky-ReLU generator).
The mode register hands out ids; the ring buffers are reused only when no inference pins them.
"""

from __future__ import annotations

import bisect
import queue
import threading
import time
from collections import deque
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Sequence

import numpy as np

from oat_edge.bundle.film import GRID_TOL, check_film_file, film_array, load_film_tables, tables_encoding  # GRID_TOL: λ this close to a grid value takes its row
from oat_edge.errors import BundleError
from oat_edge.mode import fmt_width



class FilmBank:
    def __init__(self, film_file: Path, widths: Sequence[float], sizes: Dict[float, int], negative_slope: float,
                 impl: ModuleType, n_slots: int = 16, data: Optional[bytes] = None):
        self.file = Path(film_file)
        self.widths = [float(w) for w in widths]
        self.slope = float(negative_slope)
        # safe_files.load_npz: no pickles, capped headers; ``data``: the file's verified bytes
        arrays = load_film_tables(self.file if data is None else data, str(self.file))
        check_film_file(arrays, self.file, self.widths, sizes, self.slope)  # (the same checks as `oat-edge sign`)
        slope = arrays.get("negative_slope")
        self.file_slope: Optional[float] = float(slope) if slope is not None else None
        self.grid = self._get(arrays, "lambda_grid", np.float64, 1)
        self.train_lambdas = self._get(arrays, "train_lambdas", np.float64, 1)
        self.code_rows = self._get(arrays, "code_rows", np.float32, 2)
        self.grid_list: List[float] = self.grid.tolist()

        self.encoding = tables_encoding(arrays)  # "ro" for film.npz files without the entry
        self.computer = self._computer(impl)
        self.tables: List[np.ndarray] = []
        self.sizes: List[int] = []
        for wi, w in enumerate(self.widths):
            tag = fmt_width(w)
            table = self._get(arrays, f"table_w{tag}", np.float32, 2)
            sites = self._get(arrays, f"sites_w{tag}", np.int64, 2)
            size = int(sizes.get(w, table.shape[1]))
            per_site = {name: [] for name in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")}
            for k in range(sites.shape[0]):
                for name, ndim in (("fc1_weight", 2), ("fc1_bias", 1), ("fc2_weight", 2), ("fc2_bias", 1)):
                    per_site[name].append(self._get(arrays, f"{name}_w{tag}_s{k}", np.float32, ndim))
            try:
                got = self.computer.add_width(sites, per_site["fc1_weight"], per_site["fc1_bias"],
                                              per_site["fc2_weight"], per_site["fc2_bias"], size)
            except (ValueError, TypeError) as e:
                raise BundleError(f"{self.file}: FiLM generators of width {tag} are inconsistent: {e}") from None
            assert got == wi
            self.tables.append(table)
            self.sizes.append(size)

        # Ids: grid rows of every width, then the ring slots.
        self.n_slots = int(n_slots)
        self.ring = np.zeros((self.n_slots, max(self.sizes + [1])), np.float32)
        self.row_base = [wi * self.grid.size for wi in range(len(self.widths))]
        self.ring_base = len(self.widths) * self.grid.size
        views: List[np.ndarray] = []
        for table in self.tables:
            views.extend(table[g] for g in range(table.shape[0]))
        for s in range(self.n_slots):
            views.extend(self.ring[s, :size] for size in self.sizes)
        self.views = views

    def _computer(self, impl: ModuleType):
        """The FiLM computer for off-grid λ under the bundle's λ encoding (the same codes as
        ``oat_edge.lambda_code.encode_lambdas``)."""
        if self.encoding == "scalar":
            # code = λ: the linear blend between knots 0 and 1 with codes [0] and [1] is exactly λ
            # ((1 − λ)·0 + λ·1), so the computer needs no scalar mode of its own.
            if self.code_rows.shape[1] != 1:
                raise BundleError(f"{self.file}: a scalar-encoded bundle has 1-d codes, code_rows is {list(self.code_rows.shape)}")
            return impl.FilmComputer(np.array([0.0, 1.0]), np.array([[0.0], [1.0]], np.float32), self.slope)
        if self.encoding == "ro-slerp":
            return impl.FilmComputer(self.train_lambdas, self.code_rows, self.slope, slerp=True)
        return impl.FilmComputer(self.train_lambdas, self.code_rows, self.slope)

    def _get(self, arrays, key: str, dtype, ndim: int) -> np.ndarray:
        return film_array(arrays, key, dtype, ndim, self.file)

    def grid_row(self, lam: float) -> Optional[int]:
        """Index of the grid value within GRID_TOL of λ, else None."""
        g = self.grid_list
        i = bisect.bisect_left(g, lam)
        if i < len(g) and g[i] - lam <= GRID_TOL:
            return i
        if i > 0 and lam - g[i - 1] <= GRID_TOL:
            return i - 1
        return None

    def row_id(self, width_idx: int, row: int) -> int:
        return self.row_base[width_idx] + row

    def vector(self, lam: float, width_idx: int) -> np.ndarray:
        """A new array holding the FiLM vector of (λ, width): the table row on the grid, else the
        exact computation (not the hot path: set_mode computes into the ring instead)."""
        row = self.grid_row(lam)
        if row is not None:
            return self.tables[width_idx][row].copy()
        out = np.empty(self.sizes[width_idx], np.float32)
        self.computer.compute(float(lam), width_idx, out)
        return out


class OffGridWorker:
    """Off-grid FiLM vectors computed off the caller's thread (``Runtime(offgrid="async")``).

    ``set_mode`` takes a ticket from the mode register (``reserve``) and queues the request: the
    same work whatever the model. This thread computes the exact vector (the same computer as the
    synchronous path, so the same bits) and publishes it with ``publish_vector(ticket, ...)``,
    which the register refuses when any publish or reserve came after the ticket: the newest
    request wins, and a stale one is dropped. Until then inferences keep the previous mode.
    """

    def __init__(self, film: FilmBank, register, on_live=None):
        self._film = film
        self._reg = register
        self._on_live = on_live  # (lam, width_idx, path_idx) after a publish: the bake request
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._scratch = [np.empty(size, np.float32) for size in film.sizes]
        self._cond = threading.Condition()
        self._requested = 0  # newest ticket queued
        self._processed = 0  # newest ticket published or dropped
        self.counters = {"requests": 0, "published": 0, "superseded": 0, "failures": 0}
        self._live_s: deque = deque(maxlen=4096)  # set_mode -> published, seconds
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="oat-edge-offgrid", daemon=True)
        self._thread.start()

    def request(self, ticket: int, lam: float, width_idx: int, path_idx: int) -> None:
        self._requested = ticket  # (one int store; wait() reads it under the condition)
        self._queue.put((ticket, lam, width_idx, path_idx, time.perf_counter()))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            while item is not None:  # only the newest request can still win
                try:
                    newer = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._done(item[0], "superseded")
                item = newer
            if item is None:
                return
            ticket, lam, wi, index, t0 = item
            self.counters["requests"] += 1
            try:
                out = self._scratch[wi]
                self._film.computer.compute(lam, wi, out)
                outcome = "published" if self._reg.publish_vector(ticket, lam, wi, index, out) else "superseded"
            except Exception:  # (the Runtime checked λ and width: only a closed runtime gets here)
                outcome = "failures"
            if outcome == "published":
                self._live_s.append(time.perf_counter() - t0)
                if self._on_live is not None:
                    self._on_live(lam, wi, index)
            self._done(ticket, outcome)

    def _done(self, ticket: int, outcome: str) -> None:
        with self._cond:
            self.counters[outcome] += 1
            self._processed = max(self._processed, ticket)
            self._cond.notify_all()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until every request made so far is live or superseded (True), or ``timeout``."""
        with self._cond:
            target = self._requested
            return self._cond.wait_for(lambda: self._processed >= target or self._closed, timeout)

    @property
    def pending(self) -> bool:
        return self._processed < self._requested

    def stats(self) -> dict:
        live = np.asarray(self._live_s) * 1e3
        return {**self.counters, "pending": self.pending,
                "live_ms_p50": float(np.percentile(live, 50)) if live.size else None,
                "live_ms_p99": float(np.percentile(live, 99)) if live.size else None}

    def close(self) -> None:
        if not self._closed:
            self._queue.put(None)
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=30)
            with self._cond:
                self._closed = True
                self._cond.notify_all()
