"""TensorRT backend: the bundle's engines (built on this device by ``oat-edge build-engines``).

What runs where:
- engine selection and the refusal of stale/foreign engines (another TensorRT version, another
  GPU, engines built from an older ONNX file, tampered files) use the export stage's checks
  (``oat_edge.export.tensorrt_builder.find_engine``), before any engine is deserialised;
- execution goes through the C++ extension's ``TrtExecutor`` when it was built with TensorRT
  (all execution contexts share one device scratch block, I/O buffers are bound once, each
  (path, batch) is a CUDA graph), else through a pycuda + TensorRT-Python executor with the
  same shared-scratch layout (no CUDA graphs).

Neither executor has run in this project's test environment (no GPU, TensorRT or pycuda there);
the selection, staleness and binding-shape logic around them is unit-tested.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from oat_edge.errors import BundleError, ConfigError, InputError
from oat_edge.runtime.backends.base import IOSpec, PathSpec, Runner


def tensorrt_importable() -> bool:
    """Whether ``import tensorrt`` would find a module (without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def select_engines(manifest: Dict[str, Any], bundle_dir, paths: Sequence[PathSpec], env: Dict[str, Any],
                   precision: Optional[str] = None) -> List[Dict[str, Any]]:
    """The engine entry for every path, in path order. BundleError naming the path and how to
    rebuild when any path lacks a usable engine on this machine (``env``: {"tensorrt_version",
    "gpu": {"name", "compute_capability"}}, from ``tensorrt_builder.probe_environment``)."""
    from oat_edge.export.tensorrt_builder import find_engine

    return [find_engine(manifest, bundle_dir, p.id, env["tensorrt_version"], env["gpu"], precision) for p in paths]


def engines_usable(manifest: Dict[str, Any], bundle_dir, paths: Sequence[PathSpec], env: Dict[str, Any]) -> Tuple[bool, str]:
    """(True, "") when every path has a usable engine here, else (False, why) — for backend='auto'."""
    if not manifest.get("engines"):
        return False, "the bundle has no TensorRT engines (build them with `oat-edge build-engines`)"
    try:
        select_engines(manifest, bundle_dir, paths, env)
    except BundleError as e:
        return False, str(e)
    return True, ""


def check_profile(entry: Dict[str, Any], batch: int) -> None:
    """An engine runs only batches inside the optimisation profile it was built with."""
    prof = entry.get("profile") or {}
    lo, hi = int(prof.get("min", 1)), int(prof.get("max", 1))
    if not lo <= batch <= hi:
        raise InputError(f"batch {batch} is outside engine {entry.get('path_id')}'s profile {lo}..{hi}; "
                         "rebuild engines with a wider --batch profile or split the batch")


def binding_shapes(spec: PathSpec, io: IOSpec, batch: int) -> Dict[str, Tuple[int, ...]]:
    """Shapes to bind for one inference of ``spec`` at ``batch`` (inputs and output)."""
    shapes = {io.images: (int(batch),) + tuple(io.input_shape), io.logits: (int(batch), int(io.num_classes))}
    if spec.has_film:
        shapes[io.film] = (int(spec.film_size),)
    return shapes


def max_batch(entries: Sequence[Dict[str, Any]], io: IOSpec) -> int:
    """The largest batch every engine accepts (I/O buffers are sized for it)."""
    return min([int((e.get("profile") or {}).get("max", io.batch_max)) for e in entries] + [io.batch_max])


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, paths: Sequence[PathSpec], io: IOSpec, threads: Optional[int] = None,
                 device: Optional[str] = None, manifest: Optional[Dict[str, Any]] = None,
                 bundle_dir=None, precision: Optional[str] = None, ext=None):
        from oat_edge.export.tensorrt_builder import probe_environment

        device = device or "cuda:0"
        if not str(device).startswith("cuda"):
            raise ConfigError(f"the tensorrt backend runs on a CUDA GPU, not {device!r}")
        super().__init__(paths, io, threads, str(device))
        self.env = probe_environment()  # ConfigError with install advice when TensorRT is missing
        self.entries = select_engines(manifest, bundle_dir, self.paths, self.env, precision)
        self.max_batch = max_batch(self.entries, io)
        blobs = [(Path(bundle_dir) / e["file"]).read_bytes() for e in self.entries]
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        max_film = max([p.film_size for p in self.paths] + [1])
        if ext is not None and getattr(ext, "has_tensorrt", False):
            self._exec = ext.TrtExecutor(blobs, io.images, io.film, io.logits, list(io.input_shape), io.num_classes,
                                         self.max_batch, max_film, index)
            self.executor = "c++"
        else:
            self._exec = _PycudaExecutor(blobs, io, self.paths, self.max_batch, max_film, index)
            self.executor = "pycuda"
        self.accepts_cuda = True

    def run(self, path_index: int, images: np.ndarray, film: Optional[np.ndarray]) -> np.ndarray:
        batch = images.shape[0]
        check_profile(self.entries[path_index], batch)
        out = np.empty((batch, self.io.num_classes), np.float32)
        if self.executor == "c++":
            self._exec.infer_host(path_index, images.ctypes.data, batch, 0 if film is None else film.ctypes.data,
                                  0 if film is None else film.shape[0], out.ctypes.data)
        else:
            self._exec.infer_host(path_index, images, film, out)
        return out

    def run_cuda(self, path_index: int, images, film: Optional[np.ndarray]):
        """CUDA tensors: their data_ptr is bound directly (no copies); the result is a CUDA tensor."""
        import torch

        batch = int(images.shape[0])
        check_profile(self.entries[path_index], batch)
        out = torch.empty((batch, self.io.num_classes), dtype=torch.float32, device=images.device)
        film_t = None
        if film is not None:
            film_t = torch.from_numpy(film).to(images.device, non_blocking=True)
        stream = torch.cuda.current_stream(images.device)
        if self.executor == "c++":
            self._exec.infer_device(path_index, images.data_ptr(), batch, 0 if film_t is None else film_t.data_ptr(),
                                    out.data_ptr(), stream.cuda_stream)
        else:
            self._exec.infer_device(path_index, images.data_ptr(), batch,
                                    None if film_t is None else film_t.data_ptr(), out.data_ptr(), stream)
        return out

    def describe(self):
        return {**super().describe(), "tensorrt": self.env.get("tensorrt_version"), "gpu": self.env.get("gpu"),
                "executor": self.executor, "engines": [e["file"] for e in self.entries]}


class _PycudaExecutor:
    """TensorRT through its Python API with pycuda memory: the fallback when the C++ executor is
    not built. Same layout (shared user-managed scratch, buffers bound once), no CUDA graphs."""

    def __init__(self, blobs, io: IOSpec, paths: Sequence[PathSpec], max_batch: int, max_film: int, device: int):
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise ConfigError(
                f"the tensorrt backend needs the C++ extension built with TensorRT or pycuda ({e}); "
                "install pycuda (`pip install oat-edge[tensorrt]`) or rebuild oat-edge on this device"
            ) from None
        cuda.init()
        self._cuda = cuda
        self._ctx = cuda.Device(device).retain_primary_context()
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engines, self._contexts = [], []
            scratch = 0
            for blob in blobs:
                engine = self._runtime.deserialize_cuda_engine(blob)
                if engine is None:
                    raise BundleError("TensorRT could not deserialize an engine (foreign or corrupt file)")
                ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
                size = getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size
                scratch = max(scratch, int(size))
                self._engines.append(engine)
                self._contexts.append(ctx)
            self._scratch = cuda.mem_alloc(max(scratch, 256))
            for ctx in self._contexts:
                if hasattr(ctx, "set_device_memory"):  # TensorRT ≥ 10.1
                    ctx.set_device_memory(int(self._scratch), scratch)
                else:
                    ctx.device_memory = int(self._scratch)
            chw = int(np.prod(io.input_shape))
            self._d_images = cuda.mem_alloc(4 * max_batch * chw)
            self._d_film = cuda.mem_alloc(4 * max(max_film, 1))
            self._d_logits = cuda.mem_alloc(4 * max_batch * io.num_classes)
            self._stream = cuda.Stream()
            self._io, self._paths = io, list(paths)
            for spec, ctx in zip(self._paths, self._contexts):
                self._bind(spec, ctx)
        finally:
            self._ctx.pop()
        self._lock = threading.Lock()  # contexts share the scratch block: one inference at a time

    def _bind(self, spec, ctx):
        ctx.set_tensor_address(self._io.images, int(self._d_images))
        if spec.has_film:
            ctx.set_tensor_address(self._io.film, int(self._d_film))
        ctx.set_tensor_address(self._io.logits, int(self._d_logits))

    def infer_host(self, path_index: int, images: np.ndarray, film: Optional[np.ndarray], out: np.ndarray) -> None:
        cuda, spec, ctx = self._cuda, self._paths[path_index], self._contexts[path_index]
        with self._lock:
            self._ctx.push()
            try:
                ctx.set_input_shape(self._io.images, images.shape)
                cuda.memcpy_htod_async(self._d_images, images, self._stream)
                if spec.has_film:
                    cuda.memcpy_htod_async(self._d_film, film, self._stream)
                if not ctx.execute_async_v3(self._stream.handle):
                    raise RuntimeError("TensorRT execute_async_v3 failed")
                cuda.memcpy_dtoh_async(out, self._d_logits, self._stream)
                self._stream.synchronize()
            finally:
                self._ctx.pop()

    def infer_device(self, path_index: int, images_ptr: int, batch: int, film_ptr, out_ptr: int, torch_stream) -> None:
        spec, ctx = self._paths[path_index], self._contexts[path_index]
        with self._lock:
            self._ctx.push()
            try:
                ctx.set_input_shape(self._io.images, (batch,) + tuple(self._io.input_shape))
                ctx.set_tensor_address(self._io.images, int(images_ptr))
                if spec.has_film:
                    ctx.set_tensor_address(self._io.film, int(film_ptr))
                ctx.set_tensor_address(self._io.logits, int(out_ptr))
                ok = ctx.execute_async_v3(torch_stream.cuda_stream)
                self._bind(spec, ctx)
                if not ok:
                    raise RuntimeError("TensorRT execute_async_v3 failed")
            finally:
                self._ctx.pop()
