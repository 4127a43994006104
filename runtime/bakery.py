"""Background baking: every held mode at baked speed, switching still O(1).

``set_mode`` publishes the mode as before (served at once by the FiLM-as-input path) and drops a
request into a queue (``SimpleQueue.put``: no lock a reader holds, no waiting). A worker thread
takes the newest request, folds that mode's FiLM into the width's BN path (``bake.bake_graph``,
numpy + onnx), opens a session of the baked graph on the runtime's backend, checks it against
the FiLM path on the bundle's parity images, and only then inserts it into the cache. From the
next inference on, a frame whose snapshotted mode is in the cache runs on the baked session.

Why an inference still runs wholly in one mode: the runtime snapshots (path, FiLM buffer, λ,
width) once per inference (mode register) and looks the baked session up by that snapshot's
key; the baked session computes exactly that mode (parity-checked), and the entry it took stays
alive while the frame runs even if the cache evicts it meanwhile (a Python reference).

Cache: LRU by last use (a tick from a shared counter, written without a lock on the hot path),
bounded by ``capacity`` entries and ``memory_mb`` of baked weights; counters in ``stats()``.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Optional

import numpy as np

from oat_edge.errors import ConfigError, OatEdgeError

DEFAULT_CAPACITY = 8
DEFAULT_MEMORY_MB = 256.0
_STOP = object()


@dataclass(frozen=True)
class BakeConfig:
    """``capacity``: baked modes kept (LRU); ``memory_mb``: their weights' budget;
    ``parity_tolerance``: None takes the bundle's (max |Δ| ≤ tol · max(1, max |logit|), same top-1)."""

    capacity: int = DEFAULT_CAPACITY
    memory_mb: float = DEFAULT_MEMORY_MB
    parity_tolerance: Optional[float] = None

    def __post_init__(self):
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 1:
            raise ConfigError(f"bake capacity must be a positive integer, got {self.capacity!r}")
        if not (isinstance(self.memory_mb, (int, float)) and self.memory_mb > 0):
            raise ConfigError(f"bake memory_mb must be a positive number, got {self.memory_mb!r}")


@dataclass
class BakedEntry:
    key: Hashable
    lam: float
    width_idx: int
    run: Callable[[np.ndarray], np.ndarray]
    bytes: int
    bake_s: float
    parity_max_abs: float
    tick: int = 0
    info: Dict[str, object] = field(default_factory=dict)
    path_index: int = -1


class BakedModeGone(OatEdgeError):
    """Raised by a baked entry's ``run`` when the backend reused its storage for another mode
    (a TensorRT engine copy refitted since the frame looked the entry up): the frame runs on
    the FiLM-as-input path instead."""


class Bakery:
    """The cache and its worker. ``baker`` (``runtime/bake.py``'s ``ModeBaker``) does the work:
    ``baker.bake(key, lam, width_idx, path_index) -> (run, bytes, info)`` folds a mode and opens
    it (``info["replaces"]``: the key of a cached mode whose storage the bake reused, dropped
    from the cache); ``baker.reference(path_index, images, lam, width_idx)`` runs the FiLM path
    (the parity reference); ``baker.held()`` is the key of the mode held now (a request for
    another one is stale; None: no mode of a FiLM path is held).

    ``cache``, ``clock`` and ``hits`` are read without a lock by set_mode's fast path (a dict
    get, ``next`` on an ``itertools.count``: atomic under the GIL)."""

    def __init__(self, baker, parity_images: np.ndarray, tolerance: float, config: BakeConfig, batch_max: int):
        self._baker = baker
        self._images = np.ascontiguousarray(parity_images[: max(1, min(len(parity_images), batch_max))], np.float32)
        self._tol = float(config.parity_tolerance if config.parity_tolerance is not None else tolerance)
        self.config = config
        self._budget = int(config.memory_mb * 2**20)
        self.cache: Dict[Hashable, BakedEntry] = {}
        self.clock = itertools.count(1)
        self._failed: Dict[Hashable, str] = {}
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._serial = threading.Lock()  # one bake at a time (worker or an explicit bake)
        self._lock = threading.Lock()  # cache inserts/evictions, failures, waiters
        self._done = threading.Condition(self._lock)
        self.hits = itertools.count()  # set_mode requests found cached; next() is atomic under the GIL
        self._hits_read = 0
        self.counters = {"requests": 0, "stale_requests": 0, "hits": 0, "bakes": 0, "bake_failures": 0, "evictions": 0,
                         "parity_failures": 0, "bake_seconds": 0.0}
        self._bake_times: deque = deque(maxlen=1024)
        self._transitions: deque = deque(maxlen=1024)  # set_mode -> baked live, seconds
        self._closed = False
        self._thread = threading.Thread(target=self._worker, name="oat-edge-bakery", daemon=True)
        self._thread.start()

    # --- hot path (no lock) -------------------------------------------------------------------
    def lookup(self, key: Hashable) -> Optional[BakedEntry]:
        entry = self.cache.get(key)
        if entry is not None:
            entry.tick = next(self.clock)
        return entry

    def discard(self, entry: BakedEntry) -> None:
        """A cached entry whose backend storage was reused (``BakedModeGone``): drop it and queue
        its mode again, so a mode still held gets baked again."""
        with self._lock:
            if self.cache.get(entry.key) is not entry:
                return
            del self.cache[entry.key]
            self.counters["evictions"] += 1
        self._queue.put((entry.key, entry.lam, entry.width_idx, entry.path_index, time.perf_counter()))

    def request(self, key: Hashable, lam: float, width_idx: int, path_index: int) -> None:
        """Called by set_mode: a cached mode is a hit (its LRU tick moves), any other mode is
        queued for the worker. Never waits."""
        entry = self.cache.get(key)
        if entry is not None:  # (ModeState.set_mode's fast path inlines this branch)
            entry.tick = next(self.clock)
            next(self.hits)
            return
        if key in self._failed:
            return
        self._queue.put((key, lam, width_idx, path_index, time.perf_counter()))

    # --- worker -------------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            while item is not _STOP:  # only the newest request matters: it is the mode being held
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if item is _STOP:
                return
            key, lam, wi, index, t_request = item
            self.counters["requests"] += 1
            if self._baker.held() != key:
                self.counters["stale_requests"] += 1  # the caller moved on before the worker got to it
                continue
            try:
                self.bake(key, lam, wi, index, t_request)
            except Exception:  # recorded in _failed by bake(); the FiLM path keeps serving
                pass

    def bake(self, key: Hashable, lam: float, width_idx: int, path_index: int,
             t_request: Optional[float] = None) -> BakedEntry:
        """Bake one mode now (on the calling thread) unless it is cached; raises the reason on
        failure (and remembers it, so the mode is not retried)."""
        with self._serial:
            return self._bake_serial(key, lam, width_idx, path_index, t_request)

    def _bake_serial(self, key, lam, width_idx, path_index, t_request):
        with self._lock:
            entry = self.cache.get(key)
            if entry is not None:
                return entry
            if key in self._failed:
                raise OatEdgeError(self._failed[key])
        t0 = time.perf_counter()
        try:
            run, nbytes, info = self._baker.bake(key, lam, width_idx, path_index)
            replaced = info.pop("replaces", None)
            if replaced is not None:
                with self._lock:  # its storage now holds this mode (or nothing, if parity fails)
                    if self.cache.pop(replaced, None) is not None:
                        self.counters["evictions"] += 1
            got = run(self._images)
            want = self._baker.reference(path_index, self._images, lam, width_idx)
            diff = float(np.abs(got - want).max())
            limit = self._tol * max(1.0, float(np.abs(want).max()))
            if not (diff <= limit) or not np.array_equal(got.argmax(1), want.argmax(1)):
                self.counters["parity_failures"] += 1
                raise OatEdgeError(f"baked mode (λ={lam:g}, width #{width_idx}) failed parity against the FiLM "
                                   f"path: max |Δ| {diff:.3g} > {limit:.3g} or top-1 differs")
            if nbytes > self._budget:
                raise OatEdgeError(f"a baked mode needs {nbytes / 2**20:.1f} MiB, over the bake memory budget "
                                   f"{self.config.memory_mb:g} MiB")
        except Exception as e:
            with self._lock:
                self.counters["bake_failures"] += 1
                self._failed[key] = str(e) if isinstance(e, OatEdgeError) else f"{type(e).__name__}: {e}"
                self._done.notify_all()
            raise
        dt = time.perf_counter() - t0
        entry = BakedEntry(key, float(lam), int(width_idx), run, int(nbytes), dt, diff, next(self.clock), info,
                           int(path_index))
        with self._lock:
            self.cache[key] = entry  # the swap: one dict store, seen by the next lookup
            self.counters["bakes"] += 1
            self.counters["bake_seconds"] += dt
            self._bake_times.append(dt)
            if t_request is not None:
                self._transitions.append(time.perf_counter() - t_request)
            self._evict_locked(keep=key)
            self._done.notify_all()
        return entry

    def _evict_locked(self, keep: Hashable) -> None:
        while len(self.cache) > self.config.capacity or self.memory_bytes > self._budget:
            victims = [e for k, e in self.cache.items() if k != keep]
            if not victims:
                return
            oldest = min(victims, key=lambda e: e.tick)
            del self.cache[oldest.key]
            self.counters["evictions"] += 1

    def wait(self, key: Hashable, timeout: Optional[float] = None) -> bool:
        """Block until ``key`` is baked (True) or failed / timed out (False). Tests and bench."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while key not in self.cache:
                if key in self._failed:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(left)
            return True

    # --- introspection ------------------------------------------------------------------------
    @property
    def memory_bytes(self) -> int:
        return sum(e.bytes for e in list(self.cache.values()))

    def cached(self) -> List[BakedEntry]:
        return sorted(self.cache.values(), key=lambda e: -e.tick)

    def failure(self, key: Hashable) -> Optional[str]:
        return self._failed.get(key)

    def stats(self) -> dict:
        def pct(values, q):
            return float(np.percentile(np.asarray(values), q)) if values else None

        with self._lock:  # reading an itertools.count advances it: subtract the reads
            self.counters["hits"] = next(self.hits) - self._hits_read
            self._hits_read += 1
        bakes, trans = list(self._bake_times), list(self._transitions)
        return {**self.counters, "cached": len(self.cache), "capacity": self.config.capacity,
                "memory_mb": self.config.memory_mb,
                "memory_bytes": self.memory_bytes, "memory_budget_bytes": self._budget,
                "bake_ms_p50": None if not bakes else pct(bakes, 50) * 1e3,
                "transition_ms_p50": None if not trans else pct(trans, 50) * 1e3,
                "transition_ms_p99": None if not trans else pct(trans, 99) * 1e3,
                "failed": len(self._failed)}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            if threading.current_thread() is not self._thread:  # (a finalizer may run on the worker)
                self._thread.join(timeout=30)
            self.cache.clear()
