"""TEST DOUBLES -- NOT TensorRT, NOT CUDA, NOT pycuda.

TensorRT, CUDA and pycuda cannot be installed on the development machine. To run oat-edge's own
TensorRT code there anyway, this module provides stand-ins for those dependencies:

- ``build_executor_double``: compiles the REAL runtime/csrc/trt_executor.cpp against the
  link-time double in tests/trt_double/ (fake TensorRT classes and CUDA runtime calls that record
  what they are asked) and loads it with ctypes. ``DoubleExt`` presents it to the Python runner
  the way the nanobind extension does (std::invalid_argument -> ValueError, std::runtime_error ->
  RuntimeError, as nanobind translates them).
- ``install_python_standins``: fake ``tensorrt`` and ``pycuda.driver`` modules implementing just
  the calls oat-edge's Python code makes (engine building, deserialising, contexts, streams,
  device memory), put into ``sys.modules`` for one test.

Both share one model, described at the top of tests/trt_double/fake_trt_cuda.cpp: an "engine"
is a text spec, "inference" computes a fixed formula (``expected_logits``), stream work runs
only when the host waits for it, and misuse (freed memory, stale replay state, two contexts using
the shared scratch on unordered streams) is recorded as a violation. In numeric mode
(``install_python_standins(..., numeric=True)``) an engine instead computes the ONNX graph it was
built from, with onnxruntime on the CPU and the engine's current weights (a refit changes them),
so results can be compared with the onnxruntime backend's. Tests passing against these
doubles say that oat-edge's logic is right under that model, not that TensorRT ran.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOUBLE = ROOT / "tests" / "trt_double"


# --- the model's oracle ------------------------------------------------------------------------
def expected_logits(images: np.ndarray, film: Optional[np.ndarray], tag: float, classes: int) -> np.ndarray:
    """logits[i, k] = tag + (k + 1) * mean(images[i]) + 0.5 * mean(film)."""
    mean = images.reshape(images.shape[0], -1).astype(np.float64).mean(1)
    f = 0.0 if film is None else float(np.mean(np.asarray(film, np.float64)))
    return (tag + np.outer(mean, np.arange(1, classes + 1)) + 0.5 * f).astype(np.float32)


def fake_engine_spec(chw, classes: int, film: int, batch=(1, 8), scratch: int = 4096, tag: float = 0.0, **extra) -> str:
    words = [f"OATFAKE chw={'x'.join(str(int(c)) for c in chw)} classes={classes} film={film} "
             f"batch={batch[0]}:{batch[1]} scratch={scratch} tag={tag}"]
    return " ".join(words + [f"{k}={v}" for k, v in extra.items()])


def parse_spec(text: str) -> Optional[dict]:
    words = text.split()
    if not words or words[0] != "OATFAKE":
        return None
    kv = dict(w.split("=", 1) for w in words[1:])
    spec = {"chw": tuple(int(x) for x in kv.get("chw", "1x8x8").split("x")), "classes": int(kv.get("classes", 10)),
            "film": int(kv.get("film", 0)), "scratch": int(kv.get("scratch", 4096)), "tag": float(kv.get("tag", 0))}
    spec["bmin"], spec["bmax"] = (int(x) for x in kv.get("batch", "1:8").split(":"))
    spec["refit"] = kv.get("refit")  # id of the weights a refittable engine was built with
    spec["graph"] = kv.get("graph")  # numeric mode: id of the ONNX graph the engine computes
    return spec


def tag_for_onnx(onnx_sha256: str) -> float:
    """The tag the stand-in builder gives the engine of an ONNX file (from its sha256)."""
    return int(onnx_sha256[:6], 16) % 1000 / 100.0


# --- the C++ executor on the link-time double -----------------------------------------------------
_BUILT: Dict[str, "ExecutorDouble"] = {}


def build_executor_double(out_dir: Path) -> "ExecutorDouble":
    """Compile trt_executor.cpp + the double into a shared library (two g++ processes in
    parallel, -O0: a few seconds) and load it. Cached per test session."""
    if "lib" in _BUILT:
        return _BUILT["lib"]
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise FileNotFoundError("no C++ compiler")
    flags = ["-std=c++17", "-O0", "-fPIC", "-Wall", "-Wextra", "-Werror", "-DOATEDGE_WITH_TENSORRT=1",
             "-DOATEDGE_TRT_CORE_ONLY=1", f"-I{DOUBLE / 'include'}", f"-I{ROOT / 'runtime' / 'csrc'}"]
    srcs = [DOUBLE / "driver.cpp", DOUBLE / "fake_trt_cuda.cpp"]
    objs = [out_dir / (s.stem + ".o") for s in srcs]
    jobs = [subprocess.Popen([cxx, *flags, "-c", str(s), "-o", str(o)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for s, o in zip(srcs, objs)]
    logs = [j.communicate()[0].decode() for j in jobs]
    if any(j.returncode for j in jobs):
        raise RuntimeError("compiling the executor against the double failed:\n" + "\n".join(logs))
    so = out_dir / "libtrtdouble.so"
    # -Bsymbolic: the executor's CUDA / TensorRT calls bind to the double inside this library.
    # Without it, a process that already holds the real libcudart in its global scope (torch
    # with CUDA loads it RTLD_GLOBAL) sends them to real CUDA with fake pointers: a segfault,
    # as seen on the GPU machine.
    r = subprocess.run([cxx, "-shared", "-Wl,-Bsymbolic", *map(str, objs), "-o", str(so), "-lpthread"],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stdout + r.stderr)
    _BUILT["lib"] = ExecutorDouble(ctypes.CDLL(str(so)))
    return _BUILT["lib"]


class ExecError(Exception):
    KINDS = {1: "invalid_argument", 2: "runtime_error", 3: "other"}

    def __init__(self, kind: int, msg: str):
        super().__init__(f"[{self.KINDS[kind]}] {msg}")
        self.kind, self.msg = kind, msg


P, I64, SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t


class ExecutorDouble:
    """ctypes view of tests/trt_double/driver.cpp (the executor's C API) and the double's controls."""

    def __init__(self, lib):
        self.lib = lib
        lib.oat_exec_create.restype = P
        lib.oat_exec_create.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(SZ), ctypes.c_char_p,
                                        ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(I64), I64, I64, ctypes.POINTER(I64),
                                        ctypes.c_int, ctypes.c_char_p, SZ, ctypes.POINTER(ctypes.c_int)]
        lib.oat_exec_infer_host.argtypes = [P, ctypes.c_int, P, I64, P, I64, P, ctypes.c_char_p, SZ]
        lib.oat_exec_infer_device.argtypes = [P, ctypes.c_int, SZ, I64, SZ, SZ, SZ, ctypes.c_char_p, SZ]
        lib.oat_exec_destroy.argtypes = [P]
        lib.oat_exec_scratch_bytes.argtypes = [P]
        lib.oat_exec_scratch_bytes.restype = I64
        for name in ("fake_log", "fake_violations", "fake_live"):
            getattr(lib, name).restype = ctypes.c_char_p
        lib.fake_fail.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.fake_calls.argtypes = [ctypes.c_char_p]
        lib.fake_user_malloc.argtypes = [SZ, ctypes.c_int]
        lib.fake_user_malloc.restype = SZ
        lib.fake_user_free.argtypes = [SZ]
        lib.fake_user_stream.argtypes = [ctypes.c_int]
        lib.fake_user_stream.restype = SZ
        lib.fake_user_sync.argtypes = [SZ, ctypes.c_int]
        lib.getInferLibVersion.restype = ctypes.c_int32

    def reset(self):
        self.lib.fake_reset()

    def log(self) -> List[str]:
        return self.lib.fake_log().decode().splitlines()

    def violations(self) -> List[str]:
        return self.lib.fake_violations().decode().splitlines()

    def live(self) -> Dict[str, str]:
        return dict(kv.split("=") for kv in self.lib.fake_live().decode().split())

    def executions(self) -> int:
        return self.lib.fake_executions()

    def calls(self, name: str) -> int:
        return self.lib.fake_calls(name.encode())

    def fail(self, name: str, nth: int = 1) -> None:
        self.lib.fake_fail(name.encode(), nth)

    def create(self, specs, film_sizes, chw, classes, max_batch, device=0, names=("images", "film", "logits")):
        blobs = [s if isinstance(s, bytes) else s.encode() for s in specs]
        arr = (ctypes.c_char_p * len(blobs))(*blobs)
        sizes = (SZ * len(blobs))(*[len(b) for b in blobs])
        err, kind = ctypes.create_string_buffer(512), ctypes.c_int(0)
        h = self.lib.oat_exec_create(len(blobs), arr, sizes, *[n.encode() for n in names], (I64 * 3)(*chw), classes, max_batch,
                                     (I64 * len(blobs))(*film_sizes), device, err, 512, ctypes.byref(kind))
        if kind.value:
            raise ExecError(kind.value, err.value.decode())
        return h

    def infer_host(self, h, path, images_ptr, batch, film_ptr, film_size, out_ptr):
        err = ctypes.create_string_buffer(512)
        rc = self.lib.oat_exec_infer_host(h, path, images_ptr, batch, film_ptr or None, film_size, out_ptr, err, 512)
        if rc:
            raise ExecError(rc, err.value.decode())

    def infer_device(self, h, path, images_ptr, batch, film_ptr, out_ptr, stream):
        err = ctypes.create_string_buffer(512)
        rc = self.lib.oat_exec_infer_device(h, path, images_ptr, batch, film_ptr or 0, out_ptr, stream, err, 512)
        if rc:
            raise ExecError(rc, err.value.decode())

    def destroy(self, h):
        self.lib.oat_exec_destroy(h)


def _as_python_error(e: ExecError) -> Exception:
    return ValueError(e.msg) if e.kind == 1 else RuntimeError(e.msg)


class DoubleExt:
    """The C++ executor on the double, shaped like ``oat_edge.runtime._ext`` built with TensorRT
    (has_tensorrt, tensorrt_version, tensorrt_library_version(), TrtExecutor), errors mapped as
    nanobind maps them. ``library_version`` overrides the reported libnvinfer version."""

    has_tensorrt = True

    def __init__(self, double: ExecutorDouble, library_version: Optional[str] = None, header_version: Optional[str] = None):
        v = int(double.lib.getInferLibVersion())
        compiled = f"{v // 10000}.{v // 100 % 100}.{v % 100}"
        self.double = double
        self.tensorrt_version = header_version or compiled
        self._library = library_version or compiled
        ext = self

        class TrtExecutor:
            def __init__(self, engines, images_name, film_name, logits_name, image_chw, num_classes, max_batch, film_sizes,
                         device=0):
                try:
                    self._h = ext.double.create(engines, film_sizes, image_chw, num_classes, max_batch, device,
                                                (images_name, film_name, logits_name))
                except ExecError as e:
                    raise _as_python_error(e) from None

            def infer_host(self, *args):
                try:
                    ext.double.infer_host(self._h, *args)
                except ExecError as e:
                    raise _as_python_error(e) from None

            def infer_device(self, *args):
                try:
                    ext.double.infer_device(self._h, *args)
                except ExecError as e:
                    raise _as_python_error(e) from None

            def __del__(self):
                if getattr(self, "_h", None):
                    ext.double.destroy(self._h)
                    self._h = None

        self.TrtExecutor = TrtExecutor

    def tensorrt_library_version(self) -> str:
        return self._library


# --- Python stand-ins: tensorrt and pycuda.driver -------------------------------------------------
class World:
    """State shared by the fake ``tensorrt`` and ``pycuda.driver`` modules of one test."""

    def __init__(self, version: str, gpu_name: str, scratch: Optional[int]):
        self.version, self.gpu_name, self.scratch_override = version, gpu_name, scratch
        self.lock = threading.RLock()
        self.allocs: Dict[int, list] = {}  # address -> [numpy buffer, live]
        self.streams: Dict[int, "FakeStream"] = {}
        self.violations: List[str] = []
        self.log: List[str] = []
        self.executions = 0
        self.builder_configs: List["FakeBuilderConfig"] = []
        self.refit_weights: Dict[str, Dict[str, np.ndarray]] = {}  # refit id -> ONNX initializers at build
        self.numeric = False  # engines compute their ONNX graph (onnxruntime) instead of the formula
        self.graphs: Dict[str, bytes] = {}  # graph id -> ONNX bytes (numeric mode)
        self.sessions: Dict[tuple, object] = {}
        self.fail_next: Dict[str, int] = {}
        self.tls = threading.local()
        self.cuda_initialized = False  # pycuda.driver.init() called
        self.build_devices: List[int] = []  # the current device of each engine build
        self.plans: List[bytes] = []
        self.pinned: List[np.ndarray] = []  # pycuda.driver.pagelocked_empty buffers

    # memory
    def alloc(self, nbytes: int) -> int:
        with self.lock:
            buf = np.zeros(max(int(nbytes), 1), np.uint8)
            addr = buf.ctypes.data
            self.allocs[addr] = [buf, True]
            return addr

    def device_ok(self, addr: int, nbytes: int) -> bool:
        for base, (buf, live) in self.allocs.items():
            if base <= addr and addr + nbytes <= base + buf.size:
                return live
        return False

    def stream(self) -> "FakeStream":
        with self.lock:
            s = FakeStream(self)
            self.streams[s.handle] = s
            return s

    def failing(self, name: str) -> bool:
        with self.lock:
            if self.fail_next.get(name):
                self.fail_next[name] -= 1
                if self.fail_next[name] == 0:
                    self.log.append(f"FAIL(injected) {name}")
                    return True
            return False

    def need_context(self, what: str) -> None:
        if not getattr(self.tls, "stack", None):
            self.violations.append(f"{what} without a current CUDA context")


class FakeStream:
    _next = [1000]

    def __init__(self, world: World):
        self.world = world
        FakeStream._next[0] += 1
        self.handle = FakeStream._next[0]
        self.cuda_stream = self.handle  # what a torch stream calls its handle
        self.pending: List[tuple] = []

    def enqueue(self, op: tuple) -> None:
        self.pending.append(op)

    def synchronize(self) -> None:
        w = self.world
        with w.lock:
            w.log.append(f"synchronize stream{self.handle}")
            while self.pending:
                op = self.pending.pop(0)
                if op[0] == "copy":
                    _, dst, src, nbytes, dev_addrs = op
                    if not all(w.device_ok(a, nbytes) for a in dev_addrs):
                        w.violations.append("a copy touched freed or unallocated device memory")
                        continue
                    ctypes.memmove(dst, src, nbytes)
                else:
                    _, snap = op
                    snap.run(w)


class Snapshot:
    def __init__(self, ctx: "FakeContext", stream: FakeStream):
        self.spec, self.batch, self.addr = ctx.engine.spec, ctx.batch, dict(ctx.addr)
        self.scratch, self.stream, self.engine = ctx.scratch, stream, ctx.engine

    def run(self, w: World) -> None:
        self.engine.contexts_running -= 1
        sp, b = self.spec, self.batch
        chw = int(np.prod(sp["chw"]))
        sizes = {"images": b * chw * 4, "logits": b * sp["classes"] * 4, "film": sp["film"] * 4}
        for name, addr in self.addr.items():
            if not w.device_ok(addr, sizes[name]):
                w.violations.append(f"an engine ran with '{name}' in freed or unallocated memory")
                return
        w.executions += 1
        x = np.frombuffer(ctypes.string_at(self.addr["images"], sizes["images"]), np.float32).reshape(b, chw)
        film = (np.frombuffer(ctypes.string_at(self.addr["film"], sizes["film"]), np.float32) if sp["film"] else None)
        if sp.get("graph"):
            out = _compute_graph(w, self.engine, x.reshape(b, *sp["chw"]), film)
        else:
            out = expected_logits(x, film, sp["tag"], sp["classes"])
        out = np.ascontiguousarray(out, dtype=np.float32)
        ctypes.memmove(self.addr["logits"], out.ctypes.data, out.nbytes)


def _compute_graph(w: World, engine: "FakeEngine", images: np.ndarray, film) -> np.ndarray:
    """Numeric mode: the engine's ONNX graph on onnxruntime (CPU), with the engine's weights."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    gid = engine.spec["graph"]
    key = (gid, id(engine), getattr(engine, "refits", 0))
    sess = w.sessions.get(key)
    if sess is None:
        model = onnx.load_from_string(w.graphs[gid])
        if engine.weights is not None:
            for t in model.graph.initializer:
                if t.name in engine.weights:
                    t.CopyFrom(numpy_helper.from_array(engine.weights[t.name].astype(numpy_helper.to_array(t).dtype), t.name))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        w.sessions[key] = sess
    names = [i.name for i in sess.get_inputs()]
    feeds = {names[0]: images.astype(np.float32)}
    if film is not None and "film" in names:
        feeds["film"] = np.asarray(film, np.float32)
    return sess.run(None, feeds)[0]


class FakeEngine:
    def __init__(self, world: World, spec: dict):
        self.world, self.spec = world, spec
        self.io = [("images", True, (-1, *spec["chw"]))]
        if spec["film"]:
            self.io.append(("film", True, (spec["film"],)))
        self.io.append(("logits", False, (-1, spec["classes"])))
        major_minor = tuple(int(x) for x in world.version.split(".")[:2])
        scratch = spec["scratch"] if world.scratch_override is None else world.scratch_override
        if major_minor >= (10, 1):
            self.device_memory_size_v2 = scratch
        if major_minor[0] < 11:  # TensorRT 11's bindings have no device_memory_size
            self.device_memory_size = scratch
        # A refittable engine owns a copy of the weights it was built with (name -> array).
        self.weights = ({k: v.copy() for k, v in world.refit_weights[spec["refit"]].items()}
                        if spec.get("refit") else None)
        self.contexts_running = 0

    @property
    def num_io_tensors(self):
        return len(self.io)

    def get_tensor_name(self, i):
        return self.io[i][0]

    def _t(self, name):
        return next(t for t in self.io if t[0] == name)

    def get_tensor_mode(self, name):
        return FakeTRT.TensorIOMode.INPUT if self._t(name)[1] else FakeTRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return FakeTRT.DataType.FLOAT

    def get_tensor_shape(self, name):
        return list(self._t(name)[2])

    def create_execution_context(self, strategy=None):
        if self.world.failing("create_execution_context"):
            return None
        ctx = FakeContext(self)
        if strategy is None:  # TensorRT's default (STATIC): the context allocates its own scratch
            need = self.spec["scratch"] if self.world.scratch_override is None else self.world.scratch_override
            ctx._set_memory(self.world.alloc(need), need)
        return ctx


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.batch, self.addr, self.scratch, self.scratch_size = engine, -1, {}, None, 0

    def _set_memory(self, ptr, size):
        self.scratch, self.scratch_size = int(ptr), int(size)

    @property
    def set_device_memory(self):
        """``set_device_memory(ptr, size)`` (setDeviceMemoryV2) exists from TensorRT 10.1."""
        if tuple(int(x) for x in self.engine.world.version.split(".")[:2]) < (10, 1):
            raise AttributeError("set_device_memory")
        return self._set_memory

    def _no_read(self):
        raise AttributeError("device_memory is write-only")

    def _set_device_memory(self, ptr):  # TensorRT 10.0's setter (setDeviceMemory): the engine's size
        need = self.engine.spec["scratch"] if self.engine.world.scratch_override is None else self.engine.world.scratch_override
        self._set_memory(ptr, need)

    device_memory = property(_no_read, _set_device_memory)

    def set_input_shape(self, name, shape):
        w = self.engine.world
        if w.failing("set_input_shape"):
            return False
        sp = self.engine.spec
        if name != "images" or tuple(shape[1:]) != sp["chw"] or not sp["bmin"] <= shape[0] <= sp["bmax"]:
            return False
        self.batch = int(shape[0])
        return True

    def set_tensor_address(self, name, ptr):
        if self.engine.world.failing("set_tensor_address"):
            return False
        if name not in [t[0] for t in self.engine.io]:
            return False
        self.addr[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle):
        w = self.engine.world
        with w.lock:
            w.need_context("execute_async_v3")
            if w.failing("execute_async_v3") or self.batch < 0 or len(self.addr) != len(self.engine.io):
                return False
            need = self.engine.spec["scratch"] if w.scratch_override is None else w.scratch_override
            if self.scratch is None or self.scratch_size < need:
                return False
            stream = w.streams[int(stream_handle)]
            for other in w.streams.values():  # shared scratch used by unordered streams at once
                if other is not stream and any(op[0] == "kernel" and op[1].scratch == self.scratch for op in other.pending):
                    w.violations.append(f"scratch shared by work pending on stream{other.handle} and stream{stream.handle}")
            stream.enqueue(("kernel", Snapshot(self, stream)))
            self.engine.contexts_running += 1  # until the stream runs it
            w.log.append(f"execute_async_v3 stream{stream.handle} batch={self.batch}")
            return True


class FakeBuilderConfig:
    def __init__(self, world):
        self.world, self.flags, self.pool_limits, self.profiles, self.cache = world, set(), {}, [], None

    def set_memory_pool_limit(self, pool, size):
        self.pool_limits[pool] = int(size)

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def create_timing_cache(self, blob):
        return FakeTimingCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch):
        # a cache is accepted when empty or written by this TensorRT version (the model of "foreign")
        if cache.blob and not cache.blob.startswith(f"TC{self.world.version};".encode()):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class FakeTimingCache:
    def __init__(self, blob):
        self.blob = blob

    def serialize(self):
        return self.blob or f"TC{_WORLD[0].version};".encode()


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeNetwork:
    def __init__(self, flags, strongly_typed):
        self.flags, self.onnx, self.strongly_typed = flags, None, strongly_typed


class FakeParser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def parse(self, data):
        self.network.onnx = bytes(data)
        return True

    def get_error(self, i):  # pragma: no cover - parse never fails here
        return ""


class FakeBuilder:
    def __init__(self, logger):
        self.world = _WORLD[0]

    def create_network(self, flags):
        major = int(self.world.version.split(".")[0])
        # TensorRT 11: every network is strongly typed; 10: only with the flag (bit 1 there)
        strong = major >= 11 or bool(int(flags) >> int(self.world.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) & 1)
        return FakeNetwork(flags, strong)

    def create_builder_config(self):
        cfg = FakeBuilderConfig(self.world)
        self.world.builder_configs.append(cfg)
        return cfg

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        """An engine spec read off the parsed ONNX graph (its shapes), tagged by its sha256."""
        import onnx

        stack = getattr(self.world.tls, "stack", None)
        self.world.build_devices.append(stack[-1].device if stack else 0)  # a build uses the current device
        if network.strongly_typed and "FP16" in config.flags:
            self.world.log.append("build error: BuilderFlag.FP16 on a strongly typed network")
            return None
        model = onnx.load_from_string(network.onnx)
        dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in list(model.graph.input) + list(model.graph.output)}
        (lo, _opt, hi), = [p.shapes["images"] for p in config.profiles]
        film = dims.get("film", [0])[0]
        sha = hashlib.sha256(network.onnx).hexdigest()
        extra = {}
        if "REFIT" in config.flags:  # weights stay addressable by their ONNX names
            from onnx import numpy_helper

            # name -> the build's array (its dtype and count are what a refit must give)
            self.world.refit_weights[sha[:16]] = {t.name: numpy_helper.to_array(t).copy()
                                                  for t in model.graph.initializer if t.data_type in (1, 10)}
            extra["refit"] = sha[:16]
        if self.world.numeric:
            self.world.graphs[sha[:16]] = bytes(network.onnx)
            extra["graph"] = sha[:16]
        plan = fake_engine_spec(dims["images"][1:], dims["logits"][1], film, (lo[0], hi[0]),
                                tag=tag_for_onnx(sha), **extra).encode()
        self.world.plans.append(plan)
        return plan


class FakeRefitter:
    """trt.Refitter's documented calls on a refittable fake engine. As in TensorRT's
    setNamedWeights, weights of another type or count than the build's are refused (no cast);
    a conv's weight and bias are refitted together: giving one makes the other "missing"; and
    refitting an engine that a context is still executing is a violation."""

    def __init__(self, engine, logger):
        if engine.weights is None:
            raise TypeError("engine was not built with BuilderFlag.REFIT")
        self.engine, self.pending = engine, {}

    def set_named_weights(self, name, weights):
        cur = self.engine.weights.get(name)
        arr = np.asarray(weights)
        if cur is None or cur.size != arr.size or arr.dtype != cur.dtype:
            self.engine.world.log.append(f"refitter refused {name!r}")
            return False
        self.pending[name] = arr.reshape(cur.shape).copy()
        return True

    def get_missing_weights(self):
        out = []
        for name in self.pending:
            stem, _, role = name.rpartition(".")
            partner = f"{stem}.{'bias' if role == 'weight' else 'weight'}"
            if role in ("weight", "bias") and partner in self.engine.weights and partner not in self.pending:
                out.append(partner)
        return out

    def refit_cuda_engine(self):
        if self.get_missing_weights():
            return False
        if self.engine.contexts_running:
            self.engine.world.violations.append("refit while a context of the engine was executing")
        self.engine.weights.update(self.pending)
        self.engine.refits = getattr(self.engine, "refits", 0) + 1
        return True


class FakeTRT:
    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT, HALF = "FLOAT", "HALF"

    class ExecutionContextAllocationStrategy:
        USER_MANAGED = "USER_MANAGED"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"


# Each version's enum members as its public headers (NvInfer.h) declare them; the Python bindings
# expose the same names without the leading k. Members are their names here; what matters is
# which exist (TensorRT 11 has no FP16 flag) and, for the network flags, their bit positions.
_BUILDER_FLAGS_10_0 = ("FP16 INT8 DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE "
                       "OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS DIRECT_IO REJECT_EMPTY_ALGORITHMS "
                       "VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME FP8 ERROR_ON_TIMING_CACHE_MISS BF16 "
                       "DISABLE_COMPILATION_CACHE STRIP_PLAN WEIGHTLESS REFIT_IDENTICAL WEIGHT_STREAMING")
BUILDER_FLAGS = {
    (10, 0): _BUILDER_FLAGS_10_0.split(),
    (10, 3): (_BUILDER_FLAGS_10_0 + " INT4 REFIT_INDIVIDUAL").split(),
    (11, 1): ("DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE DIRECT_IO "
              "VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME ERROR_ON_TIMING_CACHE_MISS DISABLE_COMPILATION_CACHE STRIP_PLAN "
              "REFIT_IDENTICAL WEIGHT_STREAMING REFIT_INDIVIDUAL STRICT_NANS MONITOR_MEMORY EDITABLE_TIMING_CACHE "
              "DISTRIBUTIVE_INDEPENDENCE").split(),
}
NETWORK_FLAGS = {10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
                 11: {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}}


def version_enums(version: str):
    """(BuilderFlag, NetworkDefinitionCreationFlag) of a TensorRT version: the header set of the
    newest listed version not after it."""
    import enum

    v = tuple(int(x) for x in version.split(".")[:2])
    known = max([k for k in BUILDER_FLAGS if k <= v] or [min(BUILDER_FLAGS)])
    builder_flag = types.SimpleNamespace(**{name: name for name in BUILDER_FLAGS[known]})
    network_flag = enum.IntEnum("NetworkDefinitionCreationFlag", NETWORK_FLAGS[11 if v[0] >= 11 else 10])
    return builder_flag, network_flag


_WORLD: List[World] = []


def install_python_standins(monkeypatch, version: str = "10.3.0", gpu_name: str = "Orin (nvgpu)",
                            scratch: Optional[int] = None, numeric: bool = False) -> World:
    """Put fake ``tensorrt`` and ``pycuda``/``pycuda.driver`` modules into sys.modules (undone
    by monkeypatch). ``scratch`` overrides every engine's scratch size; ``numeric``: engines
    built from now on compute their ONNX graph (see the module's docstring)."""
    world = World(version, gpu_name, scratch)
    world.numeric = numeric
    _WORLD[:] = [world]

    trt = types.ModuleType("tensorrt")
    trt.__doc__ = "TEST DOUBLE: stand-in for NVIDIA TensorRT's Python API (tests/trt_standins.py)"
    trt.__version__ = version
    for name in ("TensorIOMode", "DataType", "ExecutionContextAllocationStrategy", "MemoryPoolType"):
        setattr(trt, name, getattr(FakeTRT, name))
    trt.BuilderFlag, trt.NetworkDefinitionCreationFlag = version_enums(version)
    world.trt = trt

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, blob):
            spec = parse_spec(bytes(blob).decode(errors="replace"))
            return FakeEngine(world, spec) if spec else None

    trt.Logger, trt.Runtime, trt.Builder, trt.OnnxParser = Logger, Runtime, FakeBuilder, FakeParser
    trt.Refitter, trt.Weights = FakeRefitter, (lambda a: np.asarray(a))

    drv = types.ModuleType("pycuda.driver")
    drv.__doc__ = "TEST DOUBLE: stand-in for pycuda.driver (tests/trt_standins.py)"

    class Context:
        def __init__(self, device):
            self.device = device

        def push(self):
            stack = getattr(world.tls, "stack", None) or []
            world.tls.stack = stack + [self]

        def pop(self):
            world.tls.stack = world.tls.stack[:-1]

    class Device:
        def __init__(self, i):
            if not world.cuda_initialized:  # pycuda raises LogicError: cuInit has not been called
                raise RuntimeError("cuDeviceGet failed: not initialized (call pycuda.driver.init() first)")
            self.i = i

        def retain_primary_context(self):
            return Context(self.i)

        def name(self):
            return world.gpu_name

        def compute_capability(self):
            return (8, 7)

    class DeviceAllocation(int):
        pass

    def mem_alloc(n):
        world.need_context("mem_alloc")
        return DeviceAllocation(world.alloc(n))

    def pagelocked_empty(shape, dtype):
        world.need_context("pagelocked_empty")
        arr = np.empty(shape, dtype)
        with world.lock:
            world.pinned.append(arr)
        return arr

    def pinned(arr) -> bool:
        lo, hi = arr.ctypes.data, arr.ctypes.data + arr.nbytes
        return any(p.ctypes.data <= lo and hi <= p.ctypes.data + p.nbytes for p in world.pinned)

    def memcpy_htod_async(dst, src, stream):
        world.need_context("memcpy_htod_async")
        if not (isinstance(src, np.ndarray) and src.flags.c_contiguous and pinned(src)):
            world.violations.append("memcpy_htod_async from pageable host memory (pycuda needs page-locked)")
        src = np.ascontiguousarray(src)
        stream.enqueue(("copy", int(dst), src.ctypes.data, src.nbytes, [int(dst)]))

    def memcpy_dtoh_async(dst, src, stream):
        world.need_context("memcpy_dtoh_async")
        if not pinned(dst):
            world.violations.append("memcpy_dtoh_async into pageable host memory (pycuda needs page-locked)")
        stream.enqueue(("copy", dst.ctypes.data, int(src), dst.nbytes, [int(src)]))

    def init():
        world.cuda_initialized = True

    drv.init, drv.pagelocked_empty = init, pagelocked_empty
    drv.Device, drv.mem_alloc = Device, mem_alloc
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    drv.Stream = lambda: world.stream()
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = drv

    for mod in (trt, pycuda, drv):
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    monkeypatch.setitem(sys.modules, "cuda", None)  # no real cuda-python: the GPU is the stand-in's
    return world
