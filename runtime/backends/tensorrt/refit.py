"""TensorRT: every held mode at baked speed with refittable engines (docs/tensorrt.md).

NOT EXECUTED ON TENSORRT: written against TensorRT 10.x/11.x's documented refit API and run here
only against the stand-ins of tests/trt_standins.py (no GPU on the development machine).

The idea is the ONNX Runtime backend's background baking with engines instead of sessions:
- one engine per width, built with ``BuilderFlag.REFIT`` from a baked graph of that width
  (``oat_edge.runtime.bake.bake_graph``: any mode; the ONNX parser names each weight after its
  ONNX initializer, so the names are the same for every mode of the width);
- two copies of it, each with its own execution context and the mode (key) it holds now: the
  newest (``live``) and the other (``standby``), so the two most recently baked modes of a
  width are served at once;
- ``refit(key, weights)`` — off the hot path — takes the standby copy away from new frames,
  waits until the frames already on it finish, rewrites its mode-dependent weights
  (``bake_graph(...).changed``: the folded Conv weights and biases and the constants of the
  FiLM ops that were kept) with ``trt.Refitter(engine, logger)``, ``set_named_weights`` and
  ``refit_cuda_engine``, and only then gives it the new key and makes it the live copy (one
  reference store under a lock).
  ``acquire(key)`` hands a frame the copy that holds ``key``, or None when neither does.
The caller parity-checks the refitted copy (``check``) before it gets its key, as the ONNX
Runtime bakery does: TensorRT 11.3's release notes list a REFIT build that can drop a GEMM bias.

``RefitBaking`` puts this behind the runtime's background baking (``TensorRTRunner.bake_mode``):
it builds a width's refittable engine on that width's first bake, refits it for every later
one, and runs frames on the copies through pycuda. The build runs on the bake thread while
frames are served, so it gets ``build-engines``' safeguards: the Jetson workspace limit and a
timing cache (kept per device and TensorRT version under the user's cache folder), and it runs
with the runner's CUDA context current (the right GPU).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Hashable, Optional

import numpy as np

from oat_edge.errors import ConfigError, DeviceError


class _Copy:
    def __init__(self, engine, context):
        self.engine, self.context = engine, context
        self.inflight = 0
        self.key: Optional[Hashable] = None


class ModeRefitter:
    """Two copies of one width's refittable engine; ``acquire(key)``/``release`` around a frame,
    ``refit`` on a worker thread. ``trt`` is the imported ``tensorrt`` module; ``weight_dtype``
    the dtype of the engine's refittable weights (float16 for a strongly typed fp16 build)."""

    def __init__(self, trt, plan: bytes, logger=None, key: Optional[Hashable] = None, weight_dtype=np.float32):
        self.trt = trt
        self.logger = logger or trt.Logger(trt.Logger.WARNING)
        self.weight_dtype = np.dtype(weight_dtype)
        runtime = trt.Runtime(self.logger)
        copies = []
        for _ in range(2):
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise DeviceError("TensorRT could not deserialise the refittable engine")
            context = engine.create_execution_context()
            if context is None:
                raise DeviceError("TensorRT could not create an execution context for the refittable engine")
            copies.append(_Copy(engine, context))
        self.live, self.standby = copies
        self.live.key = key  # both hold the build's weights; one key per copy keeps lookups simple
        self._lock = threading.Lock()  # keys, inflight counts and the swap
        self._refit_lock = threading.Lock()  # one refit at a time
        self.refits = 0
        self.refit_seconds = 0.0

    @property
    def key(self) -> Optional[Hashable]:
        return self.live.key

    def keys(self):
        with self._lock:
            return [c.key for c in (self.live, self.standby) if c.key is not None]

    def standby_key(self) -> Optional[Hashable]:
        """The mode the next refit replaces (frames move the copies under the lock)."""
        with self._lock:
            return self.standby.key

    def acquire(self, key: Optional[Hashable] = None) -> Optional[_Copy]:
        """The copy holding ``key`` (None: the live copy), counted as in use until ``release``;
        None when no copy holds it (refitted for another mode since). A frame on the standby
        copy makes it the live one: the next refit rewrites the copy used least recently."""
        with self._lock:
            c = self.live if key is None else next((c for c in (self.live, self.standby) if c.key == key), None)
            if c is not None:
                c.inflight += 1
                if c is self.standby:
                    self.live, self.standby = c, self.live
            return c

    def release(self, c: _Copy) -> None:
        with self._lock:
            c.inflight -= 1

    def refit(self, key: Hashable, weights: Dict[str, np.ndarray],
              check: Optional[Callable[[object, object], bool]] = None, timeout_s: float = 30.0) -> bool:
        """Rewrite the standby copy with ``weights`` (name -> array) and make it live under
        ``key``. ``check(engine, context)`` may veto (parity): the copy then holds no mode.
        Returns whether it went live. The mode the standby held is gone either way."""
        with self._refit_lock:
            with self._lock:  # the least recently used copy; no new frame may take it from now on
                target = self.standby
                target.key = None
            deadline = time.monotonic() + timeout_s
            while True:  # the frames already on it must finish first
                with self._lock:
                    if target.inflight == 0:
                        break
                if time.monotonic() > deadline:
                    raise DeviceError("refit: frames still hold the standby engine after "
                                      f"{timeout_s:g} s; not refitting under them")
                time.sleep(0.0002)
            t0 = time.perf_counter()
            trt = self.trt
            refitter = trt.Refitter(target.engine, self.logger)
            keep = []  # TensorRT reads the host arrays during refit_cuda_engine: keep them alive
            for name, value in weights.items():
                if self.weight_dtype == np.float16:  # a value beyond float16 would become inf
                    from oat_edge.trt_engine_build import to_fp16

                    value = to_fp16(value, f"refit weights {name!r}")
                arr = np.ascontiguousarray(value, dtype=self.weight_dtype)
                keep.append(arr)
                if not refitter.set_named_weights(name, trt.Weights(arr)):
                    raise DeviceError(f"refit: TensorRT refused the weights {name!r} (unknown name or another size); "
                                      "was the engine built with BuilderFlag.REFIT from this width's graph?")
            missing = list(refitter.get_missing_weights())
            if missing:
                raise DeviceError(f"refit: TensorRT needs weights that were not given: {missing[:8]}")
            if not refitter.refit_cuda_engine():
                raise DeviceError("refit: refit_cuda_engine failed (see the TensorRT log)")
            del keep
            if check is not None and not check(target.engine, target.context):
                return False
            with self._lock:
                target.key = key
                if target is self.standby:
                    self.live, self.standby = target, self.live
            self.refits += 1
            self.refit_seconds += time.perf_counter() - t0
            return True


class RefitBaking:
    """Background baking for the TensorRT backend: per BN path (width) a ``ModeRefitter``,
    built on its first bake from that mode's baked graph and refitted for every later one;
    frames on the copies run through pycuda (host arrays in and out, one lock, as the pycuda
    executor). Built lazily, on the bakery's worker thread: the first bake of a width pays
    an engine build (seconds to minutes on a Jetson), later ones a refit."""

    def __init__(self, trt, cuda, device: int, io, profile: Dict[str, tuple], precision: str, max_batch: int,
                 builder=None, gpu: Optional[Dict[str, str]] = None, cache_dir: Optional[Path] = None):
        self.trt, self.cuda, self.io = trt, cuda, io
        self.profile, self.precision, self.max_batch = profile, precision, int(max_batch)
        self._builder = builder
        self._gpu = gpu or {}
        self._cache_dir = cache_dir
        cuda.init()
        self._ctx = cuda.Device(device).retain_primary_context()
        self._refitters: Dict[str, ModeRefitter] = {}
        self._plan_bytes: Dict[str, int] = {}
        self._lock = threading.Lock()  # the device buffers and the stream
        self._chw = tuple(int(x) for x in io.input_shape)
        (lo, _opt, hi), = [tuple(int(v[0]) for v in shapes) for shapes in profile.values()]
        self.min_batch, self.max_batch = lo, min(self.max_batch, hi)
        self._ctx.push()
        try:
            self._d_images = cuda.mem_alloc(4 * self.max_batch * int(np.prod(self._chw)))
            self._d_logits = cuda.mem_alloc(4 * self.max_batch * int(io.num_classes))
            self._stream = cuda.Stream()
            # Page-locked host buffers: asynchronous copies from pageable memory are staged
            # and cannot overlap anything.
            self._h_images = cuda.pagelocked_empty((self.max_batch,) + self._chw, np.float32)
            self._h_logits = cuda.pagelocked_empty((self.max_batch, int(io.num_classes)), np.float32)
        finally:
            self._ctx.pop()

    def _timing_cache_file(self, builder) -> Optional[Path]:
        """Where this GPU and TensorRT version's timing cache is kept across runs."""
        from oat_edge.bundle.engines import engine_device_key

        if self._gpu.get("name") in (None, "unknown"):
            return None
        base = self._cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oat-edge"
        return Path(base) / "timing-caches" / f"{engine_device_key(self._gpu, builder.version)}.cache"

    def _build(self, builder, onnx_bytes: bytes) -> bytes:
        """The refittable engine, with build-engines' workspace limit and a timing cache."""
        from oat_edge.fileio import atomic_write_bytes
        from oat_edge.trt_engine_build import default_workspace_mb

        cache_file = self._timing_cache_file(builder)
        cache = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else None
        workspace = default_workspace_mb(self._gpu)
        try:
            plan, new_cache = builder.build(onnx_bytes, self.profile, self.precision, workspace, cache, refit=True)
        except ConfigError:
            if cache is None:
                raise
            # a cache TensorRT rejects (corrupt): build without it, the new one replaces it
            plan, new_cache = builder.build(onnx_bytes, self.profile, self.precision, workspace, None, refit=True)
        if cache_file is not None and new_cache:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(cache_file, new_cache)
            except OSError:  # a read-only home: the cache is an optimisation
                pass
        return plan

    def bake(self, source_path: str, key: Hashable, baked, label: str):
        """(run, bytes, info) for ``baked`` (a BakedGraph of BN path ``source_path``) as ``key``.
        ``bytes`` is both copies of the width's engine: they stay on the device as long as any
        of its modes is held."""
        r = self._refitters.get(source_path)
        if r is None:
            from oat_edge.trt_engine_build import TensorRTEngineBuilder, convert_to_fp16

            builder = self._builder or TensorRTEngineBuilder()
            model = baked.model
            # TensorRT 11 fp16: a strongly typed network parses the fp16 copy, so its weights are float16
            strong_fp16 = self.precision == "fp16" and getattr(builder, "fp16_method", "builder-flag") == "fp16-onnx"
            if strong_fp16:
                model = convert_to_fp16(model)
            t0 = time.perf_counter()
            self._ctx.push()  # the build allocates on the current device: this runner's GPU
            try:
                plan = self._build(builder, model.SerializeToString())
                r = ModeRefitter(self.trt, plan, key=key, weight_dtype=np.float16 if strong_fp16 else np.float32)
            finally:
                self._ctx.pop()
            self._refitters[source_path], self._plan_bytes[source_path] = r, 2 * len(plan)
            info = {"engine_build_s": time.perf_counter() - t0}
        else:
            replaced = r.standby_key()  # the copy refit() rewrites (refits run one at a time, on this thread)
            self._ctx.push()
            try:
                if not r.refit(key, baked.changed):
                    raise DeviceError(f"refit of {label} was refused")
            finally:
                self._ctx.pop()
            info = {"refit": True, **({"replaces": replaced} if replaced is not None else {})}
        return self._runner(r, key, label), self._plan_bytes[source_path], info

    def _runner(self, r: ModeRefitter, key: Hashable, label: str):
        from oat_edge.runtime.bakery import BakedModeGone

        def run(images: np.ndarray) -> np.ndarray:
            c = r.acquire(key)
            if c is None:
                raise BakedModeGone(f"{label}: its engine copy now holds another mode")
            try:
                return self._execute(c.context, images)
            finally:
                r.release(c)

        return run

    def _execute(self, ctx, images: np.ndarray) -> np.ndarray:
        cuda, io = self.cuda, self.io
        batch = int(images.shape[0])
        if not self.min_batch <= batch <= self.max_batch:
            raise DeviceError(f"tensorrt refit: batch {batch} is outside the engine profile {self.min_batch}..{self.max_batch}")
        with self._lock:
            h_images, h_logits = self._h_images[:batch], self._h_logits[:batch]
            h_images[...] = images
            self._ctx.push()
            try:
                if not ctx.set_input_shape(io.images, (batch,) + self._chw):
                    raise DeviceError(f"tensorrt refit: set_input_shape(batch {batch}) failed")
                for name, ptr in ((io.images, self._d_images), (io.logits, self._d_logits)):
                    if not ctx.set_tensor_address(name, int(ptr)):
                        raise DeviceError(f"tensorrt refit: set_tensor_address({name}) failed")
                cuda.memcpy_htod_async(self._d_images, h_images, self._stream)
                if not ctx.execute_async_v3(self._stream.handle):
                    raise DeviceError("tensorrt refit: execute_async_v3 failed (see the TensorRT log)")
                cuda.memcpy_dtoh_async(h_logits, self._d_logits, self._stream)
                self._stream.synchronize()
            finally:
                self._ctx.pop()
            return h_logits.copy()

    def stats(self) -> Dict[str, object]:
        return {pid: {"refits": r.refits, "refit_seconds": r.refit_seconds, "modes": r.keys()}
                for pid, r in self._refitters.items()}
