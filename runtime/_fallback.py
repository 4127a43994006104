"""Pure-Python implementation of the C++ extension's API (``oat_edge.runtime._ext``).

Used when the extension is not built (``OATEDGE_NO_EXT=1``, no compiler at install time) and by
the tests, which run every runtime test against both and compare results. Behaviour is the
same: the same mode-register protocol (a lock here instead of atomics), the same FiLM formula
(float32 matrix products here, float64 accumulation in C++: they agree to ~1e-7) and the same
budget policy. numpy only.

It raises the built-in exceptions the extension raises (nanobind's ValueError / IndexError /
RuntimeError for the C++ ones), so callers handle both alike. The runtime validates what users
pass before calling either (a bundle's FiLM tables that fail here become a BundleError), so
these exceptions mark misuse of this internal API.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from typing import List, Optional, Tuple

import numpy as np

from oat_edge.lambda_code import slerp_angle, slerp_weights

has_tensorrt = False
tensorrt_version = None


class FilmComputer:
    """Exact FiLM vectors for off-grid λ into caller-provided buffers (docs/bundle.md)."""

    def __init__(self, train_lambdas, code_rows, slope: float, slerp: bool = False):
        lams = np.ascontiguousarray(train_lambdas, dtype=np.float64).reshape(-1)
        rows = np.asarray(code_rows)
        if lams.size == 0:
            raise ValueError("film: the training λ set is empty")
        if np.any(np.diff(lams) < 0):
            raise ValueError("film: training λ values must be sorted")
        if rows.ndim != 2 or rows.shape[0] != lams.size:
            raise ValueError("film: code_rows must have one row per training λ")
        self._lams: List[float] = lams.tolist()
        self._rows64 = rows.astype(np.float32).astype(np.float64)
        self._code_dim = rows.shape[1]
        self._slope = float(slope)
        # "ro-slerp" bundles: spherical blend between neighbouring rows (angles fixed per segment).
        self._slerp = bool(slerp)
        self._angles = [slerp_angle(self._rows64[i], self._rows64[i + 1]) for i in range(lams.size - 1)]
        # Scratch, sized once: compute() allocates no arrays.
        self._blend = np.empty(self._code_dim, np.float64)
        self._part = np.empty(self._code_dim, np.float64)
        self._code = np.empty(self._code_dim, np.float32)
        self._widths: list = []
        self._sizes: List[int] = []
        self._lock = threading.Lock()

    @property
    def num_widths(self) -> int:
        return len(self._widths)

    def film_size(self, width_idx: int) -> int:
        self._check_width(width_idx)
        return self._sizes[width_idx]

    def add_width(self, sites, fc1_weight, fc1_bias, fc2_weight, fc2_bias, film_size: int) -> int:
        sites = np.asarray(sites, dtype=np.int64)
        n = sites.shape[0] if sites.ndim == 2 else -1
        if sites.ndim != 2 or sites.shape[1] != 2 or not (
            len(fc1_weight) == len(fc1_bias) == len(fc2_weight) == len(fc2_bias) == n
        ):
            raise ValueError("film: one (offset, channels) row and four generator arrays per site")
        film_size = int(film_size)
        if film_size < 0:
            raise ValueError("film: the FiLM size of a width must not be negative")
        entries = []
        for k, (off, ch) in enumerate(sites.tolist()):
            # the same checks in the same order as film.h / module.cpp (the twins refuse alike)
            if off < 0 or off > film_size or ch <= 0 or ch > (film_size - off) // 2:
                raise ValueError("film: a site lies outside the flat vector of its width")
            c2 = 2 * ch
            w1, b1, w2, b2 = (np.ascontiguousarray(a, dtype=np.float32) for a in
                              (fc1_weight[k], fc1_bias[k], fc2_weight[k], fc2_bias[k]))
            if w1.shape != (c2, self._code_dim) or b1.shape != (c2,) or w2.shape != (c2, c2) or b2.shape != (c2,):
                raise ValueError(f"film: generator shapes of site {k} do not match its channels")
            hidden = np.empty(c2, np.float32)
            entries.append((off, c2, w1, b1, w2, b2, hidden, np.empty(c2, np.float32)))
        self._widths.append(entries)
        self._sizes.append(int(film_size))
        return len(self._widths) - 1

    def encode(self, lam: float, out: np.ndarray) -> None:
        """The λ code as ``oat_edge.lambda_code.encode_lambdas`` computes it (float64 blend of
        the neighbouring training codes, linear or spherical, rounded to float32), without
        allocating."""
        lams, lam = self._lams, float(lam)
        if lam <= lams[0]:
            lo = hi = 0
            t = 0.0
        elif lam >= lams[-1]:
            lo = hi = len(lams) - 1
            t = 0.0
        else:
            hi = bisect.bisect_left(lams, lam)
            if lams[hi] == lam:
                lo, t = hi, 0.0
            else:
                lo = hi - 1
                t = (lam - lams[lo]) / (lams[hi] - lams[lo])
        w_lo, w_hi = slerp_weights(self._angles[lo], t) if (self._slerp and hi != lo) else (1.0 - t, t)
        np.multiply(self._rows64[lo], w_lo, out=self._blend)
        np.multiply(self._rows64[hi], w_hi, out=self._part)
        np.add(self._blend, self._part, out=self._blend)
        out[: self._code_dim] = self._blend

    def compute(self, lam: float, width_idx: int, out: np.ndarray) -> None:
        self._check_width(width_idx)
        if out.dtype != np.float32 or out.ndim != 1 or out.shape[0] < self._sizes[width_idx]:
            raise ValueError("film: output buffer must be float32 and hold the width's FiLM vector")
        with self._lock:
            self.encode(lam, self._code)
            for off, c2, w1, b1, w2, b2, hidden, neg in self._widths[width_idx]:
                np.matmul(w1, self._code, out=hidden)
                np.add(hidden, b1, out=hidden)
                self._leaky(hidden, neg)
                dst = out[off : off + c2]
                np.matmul(w2, hidden, out=dst)
                np.add(dst, b2, out=dst)
                self._leaky(dst, neg)

    def _leaky(self, x: np.ndarray, scratch: np.ndarray) -> None:
        if 0.0 <= self._slope <= 1.0:  # leaky(x) = max(x, slope·x) for slopes in [0, 1]
            np.multiply(x, self._slope, out=scratch)
            np.maximum(x, scratch, out=x)
        else:
            x[...] = np.where(x >= 0, x, self._slope * x)

    def _check_width(self, w: int) -> None:
        if not 0 <= w < len(self._widths):
            raise IndexError("film: width index out of range")


class ModeRegister:
    """The mode register protocol of mode_register.h with a lock in place of atomics: readers
    pin the published slot, writers fill a slot that is neither published nor pinned."""

    def __init__(self, n_slots: int, ring: np.ndarray, ring_base: int, n_widths: int, film: Optional[FilmComputer]):
        if not 3 <= n_slots <= 0xFFFF:
            raise ValueError("mode register: n_slots must be in [3, 65535]")
        if ring.ndim != 2 or ring.shape[0] != n_slots or ring.dtype != np.float32 or not ring.flags.c_contiguous:
            raise ValueError("mode register: ring must be a C-contiguous float32 [n_slots, stride] array")
        self._n = n_slots
        self._ring = ring
        self._ring_base = ring_base
        self._n_widths = n_widths
        self._film = film
        self._records: List[Optional[Tuple[int, int, int, float, int]]] = [None] * n_slots
        self._pins = [0] * n_slots
        self._published = -1
        self._generation = 0
        self._ticket = 0  # bumped by every publish and reserve (under self._writer)
        self._last = 0
        self._state = threading.Lock()   # published slot + pin counts (tiny critical sections)
        self._writer = threading.Lock()  # one set_mode at a time

    @property
    def n_slots(self) -> int:
        return self._n

    @property
    def generation(self) -> int:
        return self._generation

    def publish(self, lam: float, width_idx: int, path_idx: int, film_id: int) -> int:
        with self._writer:
            self._ticket += 1
            s = self._claim()
            return self._commit(s, lam, width_idx, path_idx, film_id)

    def publish_computed(self, lam: float, width_idx: int, path_idx: int) -> int:
        if self._film is None:
            raise RuntimeError("mode register: no FiLM computer for off-grid λ")
        if not 0 <= width_idx < self._n_widths:
            raise IndexError("mode register: width index")
        if self._film.film_size(width_idx) > self._ring.shape[1]:
            raise ValueError("mode register: ring slot too small")
        with self._writer:
            self._ticket += 1
            s = self._claim()
            self._film.compute(lam, width_idx, self._ring[s])
            return self._commit(s, lam, width_idx, path_idx, self._ring_base + s * self._n_widths + width_idx)

    def reserve(self) -> int:
        """Take a ticket for an asynchronous switch (mode_register.h: the newest request wins)."""
        with self._writer:
            self._ticket += 1
            return self._ticket

    def publish_vector(self, ticket: int, lam: float, width_idx: int, path_idx: int, film: np.ndarray) -> int:
        """Publish a FiLM vector computed elsewhere, unless a publish or reserve came after
        ``ticket`` (then 0: superseded)."""
        if not 0 <= width_idx < self._n_widths:
            raise IndexError("mode register: width index")
        if not (isinstance(film, np.ndarray) and film.dtype == np.float32 and film.ndim == 1):
            raise TypeError("mode register: film must be a 1-d float32 array")
        n = film.shape[0]
        if n > self._ring.shape[1] or (self._film is not None and n != self._film.film_size(width_idx)):
            raise ValueError("mode register: FiLM vector size does not match the width")
        with self._writer:
            if ticket != self._ticket:
                return 0
            s = self._claim()
            self._ring[s, :n] = film
            return self._commit(s, lam, width_idx, path_idx, self._ring_base + s * self._n_widths + width_idx)

    def acquire(self):
        with self._state:
            s = self._published
            if s < 0:
                raise RuntimeError("mode register: no mode has been set")
            self._pins[s] += 1
            gen, path, film_id, lam, wi = self._records[s]
        return s, gen, path, film_id, lam, wi

    def release(self, slot: int) -> None:
        if not 0 <= slot < self._n:
            raise IndexError("mode register: bad slot")
        with self._state:
            if self._pins[slot] <= 0:
                raise RuntimeError("mode register: release() without acquire()")
            self._pins[slot] -= 1

    def current(self):
        slot, gen, path, film_id, lam, wi = self.acquire()
        self.release(slot)
        return gen, path, film_id, lam, wi

    def pins(self, slot: int) -> int:
        if not 0 <= slot < self._n:
            raise IndexError("mode register: bad slot")
        return self._pins[slot]

    def _claim(self) -> int:
        # Only writers publish and writers hold self._writer, so a slot that is free here stays
        # unpinned until we publish it: readers pin only the published slot.
        while True:
            with self._state:
                current = self._published
                for i in range(1, self._n + 1):
                    s = (self._last + i) % self._n
                    if s != current and self._pins[s] == 0:
                        self._last = s
                        return s
            time.sleep(0)

    def _commit(self, s: int, lam: float, width_idx: int, path_idx: int, film_id: int) -> int:
        with self._state:
            self._generation += 1
            self._records[s] = (self._generation, path_idx, film_id, float(lam), width_idx)
            self._published = s
            return self._generation


# --- budget policy (policy.h) -------------------------------------------------------------------
ACC_TOL = 1e-9


def _worst_if_nan(v: float) -> float:
    return math.inf if math.isnan(v) else v


def _rank_key(lam, width, sa, ra, lat, i: int, prefer: int):
    r, s, t = _worst_if_nan(-ra[i]), _worst_if_nan(-sa[i]), _worst_if_nan(lat[i])
    w, l = -width[i], lam[i]
    if prefer == 1:
        return (s, r, t, w, l)
    if prefer == 2:
        return (t, r, s, w, l)
    return (r, s, t, w, l)


def select_mode(lam, width, sa, ra, latency, min_ra: float, min_sa: float, max_latency: float,
                prefer: int, n_closest: int = 3):
    """(index of the chosen candidate, []) or (-1, closest candidates best first)."""
    lam, width, sa, ra, lat = (np.asarray(a, dtype=np.float64).tolist() for a in (lam, width, sa, ra, latency))
    n = len(lam)
    if not (len(width) == len(sa) == len(ra) == len(lat) == n):
        raise ValueError("select_mode: all candidate arrays must have the same length")
    if prefer not in (0, 1, 2):
        raise ValueError("select_mode: prefer must be 0, 1 or 2")

    def feasible(i):
        if not math.isnan(min_ra) and not (ra[i] >= min_ra - ACC_TOL):
            return False
        if not math.isnan(min_sa) and not (sa[i] >= min_sa - ACC_TOL):
            return False
        if not math.isnan(max_latency) and not (lat[i] <= max_latency):
            return False
        return True

    best, best_key = -1, None
    for i in range(n):
        if feasible(i):
            key = _rank_key(lam, width, sa, ra, lat, i, prefer)
            if best < 0 or key < best_key:
                best, best_key = i, key
    if best >= 0:
        return best, []

    def shortfall(i):
        s = 0.0
        if not math.isnan(min_ra):
            s += math.inf if math.isnan(ra[i]) else max(0.0, min_ra - ra[i])
        if not math.isnan(min_sa):
            s += math.inf if math.isnan(sa[i]) else max(0.0, min_sa - sa[i])
        if not math.isnan(max_latency):
            s += math.inf if math.isnan(lat[i]) else max(0.0, lat[i] - max_latency) / max(max_latency, 1e-12)
        return s

    order = sorted(range(n), key=lambda i: (shortfall(i), _rank_key(lam, width, sa, ra, lat, i, prefer)))
    return -1, order[: max(n_closest, 0)]


def in_unit_range(images: np.ndarray) -> bool:
    """True when every value is finite and in [0, 1] (NaN fails both comparisons of min/max)."""
    if images.size == 0:
        return True
    return bool(images.min() >= 0.0) and bool(images.max() <= 1.0)
