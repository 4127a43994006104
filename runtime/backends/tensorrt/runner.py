"""TensorRT backend runner: the bundle's engines (built on this device by ``oat-edge
build-engines``).

What runs where:
- engine selection and the refusal of stale/foreign engines (another TensorRT version, another
  GPU, engines built from an older ONNX file, tampered files) are the loader's (``loader.py``,
  by the bundle contract's rules in ``oat_edge.bundle.engines``), before any engine is
  deserialised;
- at start, the TensorRT versions must agree: Python's ``tensorrt`` (which built the engines),
  the libnvinfer the C++ extension loaded and the headers it was compiled against;
- execution goes through the C++ extension's ``TrtExecutor`` when it was built with TensorRT
  (all execution contexts share one device scratch block, all work on one stream, each
  (path, batch) a CUDA graph), else through a pycuda + TensorRT-Python executor with the same
  shared-scratch layout (no CUDA graphs; every call finishes on the GPU before the next starts);
- both check, when loading, that every engine's I/O is what the bundle describes (names,
  float32, image/FiLM/logits shapes, batch profile), and turn TensorRT/CUDA failures into one-line
  errors (``DeviceError``; a mismatched engine is a ``BundleError``).

The tests drive both executors on the CPU against recorded stand-ins of TensorRT and CUDA
(tests/trt_double), which pins their logic, not TensorRT's behaviour; docs/tensorrt.md says
what is verified on which device.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from oat_edge.errors import BundleError, ConfigError, DependencyError, DeviceError, InputError, OatEdgeError
from oat_edge.host import probe_environment
from oat_edge.runtime.backends.base import IOSpec, PathSpec, Runner
from oat_edge.runtime.backends.tensorrt.loader import select_engines


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


def _version_tuple(version: str, parts: int = 3) -> Tuple[int, ...]:
    nums = []
    for piece in str(version).split(".")[:parts]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        nums.append(int(digits) if digits else 0)
    return tuple(nums + [0] * (parts - len(nums)))


MIN_TENSORRT_MAJOR = 10


def check_tensorrt_versions(python_version: str, ext_headers: Optional[str] = None,
                            ext_library: Optional[str] = None) -> None:
    """ConfigError unless the TensorRT pieces agree: Python's ``tensorrt`` is ≥ 10; the libnvinfer
    the C++ extension loaded is the same major.minor.patch as Python's (engines built by one are
    refused or misread by another); the headers the extension was compiled against are that
    library's major.minor (else rebuild oat-edge). ``ext_*`` None: no C++ executor."""
    py = _version_tuple(python_version)
    if py[0] < MIN_TENSORRT_MAJOR:
        raise ConfigError(f"oat-edge's tensorrt backend needs TensorRT >= {MIN_TENSORRT_MAJOR}; this machine's Python "
                          f"tensorrt is {python_version} (JetPack 6.1+ ships 10.3)")
    if ext_library is not None and _version_tuple(ext_library) != py:
        raise ConfigError(f"TensorRT mismatch: oat-edge's C++ extension loaded libnvinfer {ext_library}, Python's tensorrt "
                          f"is {python_version}; install one TensorRT (JetPack's python3-libnvinfer matches its libnvinfer) "
                          "or rebuild oat-edge (`pip install -e . --no-build-isolation`)")
    if ext_headers is not None and _version_tuple(ext_headers, 2) != _version_tuple(ext_library or python_version, 2):
        raise ConfigError(f"TensorRT mismatch: oat-edge's C++ extension was compiled against TensorRT {ext_headers} headers "
                          f"but runs with {ext_library or python_version}; rebuild oat-edge on this device "
                          "(`pip install -e . --no-build-isolation`)")


def engine_scratch_bytes(engine) -> int:
    """Device scratch an engine needs (Python API): ``device_memory_size_v2`` from TensorRT 10.1
    (TensorRT 11 has only that one), ``device_memory_size`` on 10.0. A size of 0 is valid."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def engine_io_problem(tensors: Dict[str, Tuple[bool, bool, Tuple[int, ...]]], io: IOSpec, film_size: int) -> Optional[str]:
    """Why an engine's I/O is not what the bundle describes (None when it is). ``tensors``:
    name -> (is_input, is_float32, shape) with -1 for the dynamic batch."""
    expected = {io.images: True, io.logits: False}
    if film_size:
        expected[io.film] = True
    extra = sorted(set(tensors) - set(expected))
    if extra:
        return f"has I/O tensors the bundle does not describe: {extra}"
    missing = [n for n in expected if n not in tensors]
    if missing:
        return f"lacks the {missing} tensor(s)"
    for name, is_input in expected.items():
        inp, f32, _ = tensors[name]
        if inp != is_input:
            return f"has '{name}' as an {'output' if is_input else 'input'}"
        if not f32:
            return f"'{name}' is not float32 (rebuild the engine from the bundle's ONNX)"
    chw = tuple(int(x) for x in io.input_shape)
    shape = tuple(tensors[io.images][2])
    if len(shape) != 4 or shape[1:] != chw:
        return f"'{io.images}' has shape {list(shape)}, the bundle's images are [N, {', '.join(map(str, chw))}]"
    shape = tuple(tensors[io.logits][2])
    if len(shape) != 2 or shape[1] != int(io.num_classes):
        return f"'{io.logits}' has shape {list(shape)}, expected [N, {io.num_classes}]"
    if film_size:
        shape = tuple(tensors[io.film][2])
        if shape != (int(film_size),):
            return f"'{io.film}' has shape {list(shape)}, the bundle's FiLM vector has {film_size} values"
    return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, paths: Sequence[PathSpec], io: IOSpec, threads: Optional[int] = None,
                 device: Optional[str] = None, bundle=None, precision: Optional[str] = None):
        device = device or "cuda:0"
        if not str(device).startswith("cuda"):
            raise ConfigError(f"the tensorrt backend runs on a CUDA GPU, not {device!r}")
        if bundle is None:
            raise ConfigError("the tensorrt backend needs the bundle (its manifest lists the engines)")
        super().__init__(paths, io, threads, str(device))
        manifest, bundle_dir, ext = bundle.manifest, bundle.dir, bundle.ext
        self.env = probe_environment()  # ConfigError with install advice when TensorRT is missing
        use_ext = ext is not None and getattr(ext, "has_tensorrt", False)
        check_tensorrt_versions(self.env["tensorrt_version"], ext.tensorrt_version if use_ext else None,
                                ext.tensorrt_library_version() if use_ext else None)
        self.entries = select_engines(manifest, bundle_dir, self.paths, self.env, precision)
        self.max_batch = max_batch(self.entries, io)
        blobs = [(Path(bundle_dir) / e["file"]).read_bytes() for e in self.entries]
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        film_sizes = [int(p.film_size) if p.has_film else 0 for p in self.paths]
        try:
            if use_ext:
                self._exec = ext.TrtExecutor(blobs, io.images, io.film, io.logits, list(io.input_shape), io.num_classes,
                                             self.max_batch, film_sizes, index)
                self.executor = "c++"
            else:
                self._exec = _PycudaExecutor(blobs, io, self.paths, self.max_batch, index)
                self.executor = "pycuda"
        except OatEdgeError:
            raise
        except ValueError as e:  # the C++ executor's std::invalid_argument: an engine that does not match
            raise BundleError(f"{_one_line(e)}; {REBUILD}") from None
        except Exception as e:  # noqa: BLE001 - TensorRT/CUDA failures of any binding become one line
            raise DeviceError(f"tensorrt: loading the engines failed: {_one_line(e)}") from None
        self.accepts_cuda = True
        self._device_index = index
        self._refit: Optional[Any] = None  # RefitBaking, made on the first bake

    @property
    def supports_baking(self) -> bool:
        """Background baking by engine refit (refit.RefitBaking) runs frames through pycuda."""
        import importlib.util

        try:
            return importlib.util.find_spec("pycuda.driver") is not None
        except (ImportError, ValueError):
            return False

    def bake_mode(self, baked, key, label: str, source_path: Optional[str] = None):
        """A held mode at baked speed: the width's refittable engine (built from this baked graph
        on the width's first bake) refitted with the mode's folded weights (refit.py)."""
        if self._refit is None:
            import pycuda.driver as cuda
            import tensorrt as trt

            from oat_edge.runtime.backends.tensorrt.refit import RefitBaking

            entry = next(e for e in self.entries if e.get("path_id") == source_path)
            prof = entry.get("profile") or {}
            chw = tuple(int(x) for x in self.io.input_shape)
            lo, opt, hi = (int(prof.get(k, d)) for k, d in (("min", 1), ("opt", 1), ("max", self.max_batch)))
            profile = {self.io.images: ((lo, *chw), (opt, *chw), (hi, *chw))}
            self._refit = RefitBaking(trt, cuda, self._device_index, self.io, profile,
                                      entry.get("precision") or "fp32", self.max_batch, gpu=self.env.get("gpu"))
        try:
            return self._refit.bake(source_path, key, baked, label)
        except OatEdgeError:
            raise
        except Exception as e:  # noqa: BLE001 - TensorRT/CUDA failures of any binding become one line
            raise DeviceError(f"tensorrt: baking {label} by refit failed: {_one_line(e)}") from None

    def _call(self, fn, *args) -> None:
        try:
            fn(*args)
        except OatEdgeError:
            raise
        except ValueError as e:  # bad input the checks above did not catch
            raise InputError(_one_line(e)) from None
        except Exception as e:  # noqa: BLE001
            raise DeviceError(f"tensorrt: inference failed: {_one_line(e)}") from None

    def run(self, path_index: int, images: np.ndarray, film: Optional[np.ndarray]) -> np.ndarray:
        batch = images.shape[0]
        check_profile(self.entries[path_index], batch)
        images = np.ascontiguousarray(images, dtype=np.float32)
        out = np.empty((batch, self.io.num_classes), np.float32)
        if film is not None:
            film = np.ascontiguousarray(film, dtype=np.float32)
        if self.executor == "c++":
            self._call(self._exec.infer_host, path_index, images.ctypes.data, batch, 0 if film is None else film.ctypes.data,
                       0 if film is None else film.shape[0], out.ctypes.data)
        else:
            self._call(self._exec.infer_host, path_index, images, film, out)
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
            self._call(self._exec.infer_device, path_index, images.data_ptr(), batch,
                       0 if film_t is None else film_t.data_ptr(), out.data_ptr(), stream.cuda_stream)
        else:
            self._call(self._exec.infer_device, path_index, images.data_ptr(), batch,
                       None if film_t is None else film_t.data_ptr(), out.data_ptr(), stream)
        return out

    def describe(self):
        return {**super().describe(), "tensorrt": self.env.get("tensorrt_version"), "gpu": self.env.get("gpu"),
                "executor": self.executor, "engines": [e["file"] for e in self.entries],
                **({"refit": self._refit.stats()} if self._refit is not None else {})}

    def close(self) -> None:
        """Release the engines (the executor waits for work in flight first) and the refittable
        copies of background baking."""
        self._exec = None
        self._refit = None


REBUILD = "rebuild the engines with `oat-edge build-engines BUNDLE --force`"


def _describe_engine(trt, engine) -> Dict[str, Tuple[bool, bool, Tuple[int, ...]]]:
    out = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out[name] = (engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                     engine.get_tensor_dtype(name) == trt.DataType.FLOAT,
                     tuple(int(x) for x in engine.get_tensor_shape(name)))
    return out


class _PycudaExecutor:
    """TensorRT through its Python API with pycuda memory: the fallback when the C++ executor is
    not built. Same layout (one shared user-managed scratch block for every context), no CUDA
    graphs, and a stricter ordering: all work goes to one stream (``self._stream``) under one lock
    and has finished on the GPU before the lock is released, so no two contexts can ever use the
    shared scratch at once. Device calls therefore block: they wait for the caller's stream
    (their inputs) before enqueueing and for the executor's stream (the outputs) before
    returning. The C++ executor orders with events instead and returns at once. Host calls
    stage through page-locked buffers; every buffer holds ``max_batch`` images (the smallest
    batch maximum of the engines), and a larger batch is refused."""

    def __init__(self, blobs, io: IOSpec, paths: Sequence[PathSpec], max_batch: int, device: int):
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise DependencyError(
                f"the tensorrt backend needs the C++ extension built with TensorRT or pycuda ({e}); "
                "install pycuda (`pip install oat-edge[tensorrt]`) or rebuild oat-edge on this device"
            ) from None
        cuda.init()
        self._cuda, self._trt = cuda, trt
        self._ctx = cuda.Device(device).retain_primary_context()
        self._io, self._paths = io, list(paths)
        self._chw = tuple(int(x) for x in io.input_shape)
        self._max_batch = int(max_batch)  # the I/O buffers hold this many images, whatever a profile allows
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engines, self._contexts = [], []
            scratch = 0
            for i, (blob, spec) in enumerate(zip(blobs, self._paths)):
                engine = self._runtime.deserialize_cuda_engine(blob)
                if engine is None:
                    raise BundleError(f"TensorRT could not deserialize the engine of {spec.id} (foreign or corrupt file); "
                                      + REBUILD)
                problem = engine_io_problem(_describe_engine(trt, engine), io, spec.film_size if spec.has_film else 0)
                if problem:
                    raise BundleError(f"the engine of {spec.id} {problem}; {REBUILD}")
                ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
                if ctx is None:
                    raise DeviceError(f"TensorRT could not create an execution context for {spec.id}")
                scratch = max(scratch, engine_scratch_bytes(engine))
                self._engines.append(engine)
                self._contexts.append(ctx)
            self._scratch = cuda.mem_alloc(max(scratch, 256))
            for ctx in self._contexts:
                if hasattr(ctx, "set_device_memory"):  # TensorRT ≥ 10.1
                    ctx.set_device_memory(int(self._scratch), scratch)
                else:
                    ctx.device_memory = int(self._scratch)
            max_film = max([p.film_size for p in self._paths if p.has_film] + [1])
            self._d_images = cuda.mem_alloc(4 * max_batch * int(np.prod(self._chw)))
            self._d_film = cuda.mem_alloc(4 * max_film)
            self._d_logits = cuda.mem_alloc(4 * max_batch * int(io.num_classes))
            self._stream = cuda.Stream()
            # Page-locked host staging: asynchronous copies from pageable memory cannot overlap.
            self._h_images = cuda.pagelocked_empty((max_batch,) + self._chw, np.float32)
            self._h_film = cuda.pagelocked_empty((max_film,), np.float32)
            self._h_logits = cuda.pagelocked_empty((max_batch, int(io.num_classes)), np.float32)
        finally:
            self._ctx.pop()
        self._lock = threading.Lock()

    def _prepare(self, path_index: int, batch: int, images: int, film: Optional[int], logits: int):
        """Shape and addresses of this call, every call (another call may have left others)."""
        spec, ctx = self._paths[path_index], self._contexts[path_index]
        if not 1 <= int(batch) <= self._max_batch:
            raise InputError(f"batch {batch} is over the {self._max_batch} images the executor's buffers hold "
                             "(the smallest batch maximum of the engines); split the batch")
        if not ctx.set_input_shape(self._io.images, (int(batch),) + self._chw):
            raise DeviceError(f"tensorrt: inference failed: set_input_shape({self._io.images}, batch {batch}) failed")
        bindings = [(self._io.images, images), (self._io.logits, logits)]
        if spec.has_film:
            if not film:
                raise InputError(f"path {spec.id} needs its FiLM vector")
            bindings.insert(1, (self._io.film, film))
        for name, ptr in bindings:
            if not ctx.set_tensor_address(name, int(ptr)):
                raise DeviceError(f"tensorrt: inference failed: set_tensor_address({name}) failed")
        return spec, ctx

    def _enqueue(self, ctx) -> None:
        if not ctx.execute_async_v3(self._stream.handle):
            raise DeviceError("tensorrt: inference failed: execute_async_v3 failed (see the TensorRT log above)")

    def infer_host(self, path_index: int, images: np.ndarray, film: Optional[np.ndarray], out: np.ndarray) -> None:
        cuda = self._cuda
        with self._lock:
            self._ctx.push()
            try:
                spec = self._paths[path_index]
                if spec.has_film and (film is None or film.shape != (spec.film_size,)):
                    raise InputError(f"path {spec.id} takes a FiLM vector of size {spec.film_size}")
                batch = int(images.shape[0])
                _spec, ctx = self._prepare(path_index, batch, int(self._d_images), int(self._d_film),
                                           int(self._d_logits))
                h_images, h_logits = self._h_images[:batch], self._h_logits[:batch]
                h_images[...] = images
                cuda.memcpy_htod_async(self._d_images, h_images, self._stream)
                if spec.has_film:
                    h_film = self._h_film[:spec.film_size]
                    h_film[...] = film
                    cuda.memcpy_htod_async(self._d_film, h_film, self._stream)
                self._enqueue(ctx)
                cuda.memcpy_dtoh_async(h_logits, self._d_logits, self._stream)
                self._stream.synchronize()
                out[...] = h_logits
            finally:
                self._ctx.pop()

    def infer_device(self, path_index: int, images_ptr: int, batch: int, film_ptr, out_ptr: int, caller_stream) -> None:
        with self._lock:
            self._ctx.push()
            try:
                caller_stream.synchronize()  # the caller's stream has written the inputs
                _spec, ctx = self._prepare(path_index, batch, images_ptr, film_ptr, out_ptr)
                self._enqueue(ctx)
                self._stream.synchronize()  # outputs written, scratch free, before the lock goes
            finally:
                self._ctx.pop()
