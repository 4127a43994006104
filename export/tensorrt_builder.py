"""TensorRT engines for a bundle (``oat-edge build-engines``), built on the target device.

The TensorRT calls are kept in one thin class (``TensorRTEngineBuilder``), written against
NVIDIA's documented Python API and import-guarded. **TensorRT cannot be installed on the
machine this project is developed on, so that class has never executed here.** Everything
around it is tested without TensorRT: batch-profile parsing, the staleness rules
(``check_engine``), the manifest update (atomic; a failed build leaves the bundle as it was),
the fp16 ONNX conversion (run in onnxruntime) and the no-TensorRT error.

Versions:
- TensorRT 10.x (JetPack 6.1+/6.2 ship 10.3): explicit batch is the default network mode;
  fp16 is requested with ``BuilderFlag.FP16`` on the fp32 graph ("weak typing").
- TensorRT 11.x: networks are always strongly typed and ``BuilderFlag.FP16`` is gone; the
  precision must be in the graph, so fp16 builds parse an fp16 copy of the path made by
  ``convert_to_fp16`` (float32 inputs/outputs kept, Casts at the edges).
- fp32 builds clear ``BuilderFlag.TF32`` where it exists, so "fp32" means fp32.
- TensorRT before 10 is refused (the runtime's executors use the TensorRT 10 API).
- A timing cache that TensorRT rejects (another GPU or TensorRT version) is an error, not
  silently ignored and then overwritten.
- On Jetson (the GPU shares the module's RAM) the builder workspace defaults to
  ``default_workspace_mb``: min(1024 MiB, RAM / 8), so a build on a small Orin module is not
  taken by the OOM killer. Elsewhere TensorRT's own default applies. ``--workspace`` overrides.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from oat_edge.errors import BundleError, ConfigError
from oat_edge.fileio import PathLike, atomic_write_bytes, atomic_write_json, sha256_file

PRECISIONS = ("fp32", "fp16")
REBUILD_HINT = "rebuild it on this device with `oat-edge build-engines {bundle}`"


# --- batch profile ------------------------------------------------------------------------
def parse_batch_profile(value: Union[str, Sequence[int], Dict[str, int]]) -> Tuple[int, int, int]:
    """'MIN:OPT:MAX' (or a 3-sequence, or {"min","opt","max"}) -> (min, opt, max) with
    1 ≤ min ≤ opt ≤ max; ConfigError otherwise."""
    raw = value
    if isinstance(value, dict):
        value = (value.get("min"), value.get("opt"), value.get("max"))
    if isinstance(value, str):
        parts = value.replace(",", ":").split(":")
    else:
        parts = list(value)
    if len(parts) != 3:
        raise ConfigError(f"batch profile must be MIN:OPT:MAX (e.g. 1:8:64), got {raw!r}")
    try:
        lo, opt, hi = (int(str(p).strip()) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"batch profile must be three integers MIN:OPT:MAX, got {raw!r}") from None
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"batch profile needs 1 ≤ MIN ≤ OPT ≤ MAX, got {lo}:{opt}:{hi}")
    return lo, opt, hi


# --- environment ------------------------------------------------------------------------------
def import_tensorrt():
    """The ``tensorrt`` module, or ConfigError saying how to get it."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise ConfigError(
            "TensorRT is not installed: engines are built on the target device (JetPack 6 ships "
            "TensorRT 10.x as python3-libnvinfer; on x86 `pip install tensorrt`). The bundle's ONNX "
            "paths run without it (onnxruntime)."
        ) from None
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
        return True
    except ConfigError:
        return False


def gpu_info() -> Dict[str, str]:
    """{"name", "compute_capability"} of CUDA device 0, asked of cuda-python, pycuda or torch,
    whichever works; name "unknown" if none does (never executed on a GPU here)."""
    try:  # cuda-python: new module layout first, then the old one
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, dev = cudart.cudaGetDevice()
        if err == cudart.cudaError_t.cudaSuccess:
            err, props = cudart.cudaGetDeviceProperties(dev)
            if err == cudart.cudaError_t.cudaSuccess:
                name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
                return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:  # missing module, no driver, no device: try the next source
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    return {"name": "unknown", "compute_capability": "unknown"}


def probe_environment() -> Dict[str, Any]:
    """TensorRT version and GPU of this machine; ConfigError without TensorRT."""
    trt = import_tensorrt()
    return {"tensorrt_version": str(trt.__version__), "gpu": gpu_info()}


JETSON_WORKSPACE_CAP_MB = 1024


def is_jetson(gpu: Optional[Dict[str, str]] = None) -> bool:
    """A Jetson module (integrated GPU sharing the system RAM): /etc/nv_tegra_release exists or
    the GPU name says so (cudart reports e.g. "Orin (nvgpu)")."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    name = str((gpu or {}).get("name", "")).lower()
    return any(k in name for k in ("orin", "xavier", "tegra", "jetson", "nvgpu"))


def total_memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def default_workspace_mb(gpu: Optional[Dict[str, str]], memory_bytes: Optional[int] = None) -> Optional[int]:
    """The builder workspace limit when none is given: on Jetson min(1024, RAM/8) MiB (at least
    256), elsewhere None (TensorRT's default, the GPU's memory)."""
    if not is_jetson(gpu):
        return None
    mem = memory_bytes if memory_bytes is not None else total_memory_bytes()
    if not mem:
        return JETSON_WORKSPACE_CAP_MB
    return max(256, min(JETSON_WORKSPACE_CAP_MB, int(mem) // 8 >> 20))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def engine_device_key(gpu: Dict[str, str], tensorrt_version: str) -> str:
    """Folder name of a device's engines: '<gpu-name>-sm<cc>-trt<version>', e.g.
    'orin-sm87-trt10.3.0'."""
    cc = str(gpu.get("compute_capability", "unknown")).replace(".", "")
    return f"{_slug(str(gpu.get('name', 'gpu')))}-sm{cc}-trt{tensorrt_version}"


def _same_gpu_name(a: str, b: str) -> bool:
    # cudart, pycuda and torch spell the same GPU slightly differently ("NVIDIA Orin" vs "Orin").
    def norm(s):
        return _slug(str(s)).replace("nvidia-", "").replace("-nvgpu", "")

    return norm(a) == norm(b)


# --- staleness --------------------------------------------------------------------------------
class EngineCheck(NamedTuple):
    ok: bool
    reason: str

    def __bool__(self) -> bool:  # `if check_engine(...):` reads naturally
        return self.ok


ENGINE_KEYS = ("path_id", "file", "sha256", "tensorrt_version", "gpu_name", "compute_capability", "precision", "profile", "onnx_sha256")


def check_engine(entry: Dict[str, Any], trt_version: str, gpu: Dict[str, str], onnx_sha: Optional[str],
                 bundle_dir: Optional[PathLike] = None) -> EngineCheck:
    """Can this engine run here? A TensorRT engine is tied to the exact TensorRT version and to
    the GPU model it was built on, and must come from the bundle's current ONNX file. With
    ``bundle_dir`` the engine file's sha256 is checked too. Returns (ok, reason)."""
    bundle = str(bundle_dir) if bundle_dir is not None else "BUNDLE"
    hint = REBUILD_HINT.format(bundle=bundle)
    pid = entry.get("path_id", "?")
    missing = [k for k in ENGINE_KEYS if k not in entry]
    if missing:
        return EngineCheck(False, f"engine entry for {pid} lacks {missing}; {hint}")
    if str(entry["tensorrt_version"]) != str(trt_version):
        return EngineCheck(False, f"engine {pid} was built with TensorRT {entry['tensorrt_version']}, this machine has {trt_version}; {hint}")
    if gpu.get("name") in (None, "unknown") or gpu.get("compute_capability") in (None, "unknown"):
        return EngineCheck(False, f"cannot identify this machine's GPU (install cuda-python) to match engine {pid}")
    if str(entry["compute_capability"]) != str(gpu["compute_capability"]) or not _same_gpu_name(entry["gpu_name"], gpu["name"]):
        return EngineCheck(
            False,
            f"engine {pid} was built for {entry['gpu_name']} (sm {entry['compute_capability']}), this machine has "
            f"{gpu['name']} (sm {gpu['compute_capability']}); {hint}",
        )
    if onnx_sha is None:
        return EngineCheck(False, f"engine {pid} belongs to a path the bundle no longer has; {hint}")
    if entry["onnx_sha256"] != onnx_sha:
        return EngineCheck(False, f"engine {pid} was built from a different ONNX file than the bundle's (re-exported?); {hint}")
    if bundle_dir is not None:
        path = Path(bundle_dir) / entry["file"]
        if not path.is_file():
            return EngineCheck(False, f"engine file {entry['file']} is missing; {hint}")
        if sha256_file(path) != entry["sha256"]:
            return EngineCheck(False, f"engine file {entry['file']} does not match its sha256 (tampered or truncated); {hint}")
    return EngineCheck(True, "ok")


def find_engine(manifest: Dict[str, Any], bundle_dir: PathLike, path_id: str, trt_version: str, gpu: Dict[str, str],
                precision: Optional[str] = None) -> Dict[str, Any]:
    """The engine entry a loader should use for ``path_id`` on this device (preferring fp16
    when ``precision`` is None); BundleError with a rebuild hint when none is usable."""
    onnx_sha = {e["id"]: e["sha256"] for e in list(manifest["paths"]) + list(manifest.get("baked", []) or [])}.get(path_id)
    candidates = [e for e in manifest.get("engines", []) or [] if e.get("path_id") == path_id
                  and (precision is None or e.get("precision") == precision)]
    candidates.sort(key=lambda e: 0 if e.get("precision") == "fp16" else 1)
    reasons = []
    for e in candidates:
        check = check_engine(e, trt_version, gpu, onnx_sha, bundle_dir)
        if check.ok:
            return e
        reasons.append(check.reason)
    if not reasons:
        raise BundleError(
            f"{bundle_dir} has no {precision or ''} TensorRT engine for {path_id} on this device; "
            + REBUILD_HINT.format(bundle=bundle_dir)
        )
    raise BundleError(f"no usable engine for {path_id}: " + " | ".join(reasons))


# --- fp16 ONNX (TensorRT 11 strong typing) -----------------------------------------------------
FP16_MAX = 65504.0


def convert_to_fp16(model, keep_io_types: bool = True):
    """A copy of an fp32 ONNX model computing in float16: float initializers and Constant
    tensors become float16, Cast-to-float becomes Cast-to-float16, and (with
    ``keep_io_types``) float32 inputs/outputs stay float32 with Casts at the graph edges —
    what a strongly typed TensorRT network needs for an fp16 engine. BundleError if a weight
    does not fit float16."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

    def to_half(t, where):
        arr = numpy_helper.to_array(t)
        big = float(np.max(np.abs(arr))) if arr.size else 0.0
        if not np.all(np.isfinite(arr)) or big > FP16_MAX:
            raise BundleError(f"{where} holds values outside the float16 range (max |x| = {big:.3g}); build fp32 engines instead")
        return numpy_helper.from_array(arr.astype(np.float16), t.name)

    for i, t in enumerate(g.initializer):
        if t.data_type == FLOAT:
            g.initializer[i].CopyFrom(to_half(t, f"initializer {t.name}"))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == FLOAT:
                a.t.CopyFrom(to_half(a.t, f"constant {node.name}"))
            if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                a.i = HALF
            if node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                raise BundleError(f"constant {node.name} uses {a.name}; convert_to_fp16 does not handle it")

    def rename_uses(old, new):
        for n in g.node:
            for j, x in enumerate(n.input):
                if x == old:
                    n.input[j] = new

    edge_nodes = []
    for vi in g.input:
        if vi.type.tensor_type.elem_type != FLOAT:
            continue
        if keep_io_types:
            half = f"{vi.name}__fp16"
            rename_uses(vi.name, half)
            edge_nodes.append(helper.make_node("Cast", [vi.name], [half], to=HALF, name=f"Cast_in_{vi.name}"))
        else:
            vi.type.tensor_type.elem_type = HALF
    tail = []
    for vi in g.output:
        if vi.type.tensor_type.elem_type != FLOAT:
            continue
        if keep_io_types:
            half = f"{vi.name}__fp16"
            for n in g.node:
                for j, x in enumerate(n.output):
                    if x == vi.name:
                        n.output[j] = half
            rename_uses(vi.name, half)
            tail.append(helper.make_node("Cast", [half], [vi.name], to=FLOAT, name=f"Cast_out_{vi.name}"))
        else:
            vi.type.tensor_type.elem_type = HALF
    nodes = edge_nodes + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    return m


# --- the TensorRT calls (never executed in this project's CI: no TensorRT there) ----------------
class TensorRTEngineBuilder:
    """Builds serialized engines with the TensorRT Python API (10.x and 11.x)."""

    def __init__(self):
        self.trt = import_tensorrt()
        self.version = str(self.trt.__version__)
        self.major = int(self.version.split(".")[0])
        if self.major < 10:
            raise ConfigError(f"TensorRT {self.version} is too old: oat-edge builds and runs engines with TensorRT >= 10 "
                              "(JetPack 6.1+ ships 10.3)")
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)

    @property
    def fp16_method(self) -> str:
        return "fp16-onnx" if self.major >= 11 else "builder-flag"

    def build(self, onnx_bytes: bytes, dynamic_inputs: Dict[str, Tuple[tuple, tuple, tuple]], precision: str,
              workspace_mb: Optional[int] = None, timing_cache: Optional[bytes] = None) -> Tuple[bytes, Optional[bytes]]:
        """(serialized engine, updated timing cache). ``onnx_bytes`` is already the graph to
        parse (the fp16 copy for TensorRT 11 fp16 builds)."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        strong = precision == "fp16" and self.fp16_method == "fp16-onnx"
        if strong and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BundleError(f"TensorRT's ONNX parser rejected the graph: {errors}")
        config = builder.create_builder_config()
        if workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        if precision == "fp16" and not strong:
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in dynamic_inputs.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(timing_cache or b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            if timing_cache:
                raise ConfigError("TensorRT rejected the timing cache (written on another GPU or TensorRT version, or "
                                  "corrupt); delete it or pass another --timing-cache path")
            raise BundleError("TensorRT could not set up an empty timing cache")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BundleError("TensorRT failed to build the engine (see the TensorRT log above)")
        new_cache = config.get_timing_cache()
        return bytes(plan), (bytes(new_cache.serialize()) if new_cache is not None else None)


# --- orchestration (tested with a stand-in builder) ---------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def build_engines(bundle_dir: PathLike, precision: str = "fp16", batch=None, timing_cache: Optional[PathLike] = None,
                  workspace_mb: Optional[int] = None, force: bool = False, progress: bool = True,
                  builder=None, gpu: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
    """Build (or keep) one engine per path and baked path of a bundle for this device and
    record them in the manifest. Up-to-date engines are kept unless ``force``; stale or
    foreign ones are rebuilt. Engines are staged and the manifest rewritten only when every
    build succeeded, so a failure leaves the bundle as it was. Returns [{"path_id", "action",
    "file"}] with action "built" | "kept".

    ``builder``/``gpu`` default to TensorRT and this machine's GPU; tests pass stand-ins.
    ``workspace_mb`` None: ``default_workspace_mb`` (a limit on Jetson only).
    """
    from oat_edge.export.bundle import MANIFEST, iter_entries, load_manifest

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bundle = Path(bundle_dir)
    # Engine files are judged by check_engine below (a damaged one is rebuilt, not fatal).
    manifest = load_manifest(bundle, verify_hashes=True, check_engines=False)
    if builder is None:
        builder = TensorRTEngineBuilder()
    if gpu is None:
        gpu = gpu_info()
    if gpu.get("name") in (None, "unknown"):
        raise ConfigError("no CUDA GPU found (or no cuda-python/pycuda/torch to ask): TensorRT engines are built on the target GPU")
    lo, opt, hi = parse_batch_profile(batch if batch is not None else manifest["batch"])
    device = engine_device_key(gpu, builder.version)
    chw = [int(x) for x in manifest["io"]["images"]["shape"][1:]]
    images = manifest["io"]["images"]["name"]
    profile = {images: ((lo, *chw), (opt, *chw), (hi, *chw))}
    if workspace_mb is None:
        workspace_mb = default_workspace_mb(gpu)
    cache_bytes = None
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()

    existing = {(e["path_id"], e.get("precision"), e.get("device")): e for e in manifest.get("engines", []) or []}
    engines_dir = bundle / "engines"
    had_engines_dir = engines_dir.is_dir()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_ensure_dir(engines_dir)))
    results, new_entries = [], []
    try:
        entries = list(iter_entries(manifest))
        for entry in _progress(entries, progress, f"building {precision} engines"):
            rel = f"engines/{device}/{entry['id']}.{precision}.engine"
            old = existing.get((entry["id"], precision, device))
            if old is not None and not force and old.get("profile") == {"min": lo, "opt": opt, "max": hi}:
                if check_engine(old, builder.version, gpu, entry["sha256"], bundle).ok:
                    results.append({"path_id": entry["id"], "action": "kept", "file": old["file"]})
                    continue
            onnx_bytes = (bundle / entry["file"]).read_bytes()
            if precision == "fp16" and getattr(builder, "fp16_method", "builder-flag") == "fp16-onnx":
                import onnx

                onnx_bytes = convert_to_fp16(onnx.load_from_string(onnx_bytes)).SerializeToString()
            plan, cache_bytes = builder.build(onnx_bytes, profile, precision, workspace_mb, cache_bytes)
            staged = staging / f"{entry['id']}.{precision}.engine"
            staged.write_bytes(plan)
            new_entries.append({
                "path_id": entry["id"], "kind": entry["kind"], "file": rel, "sha256": sha256_file(staged),
                "bytes": staged.stat().st_size, "device": device, "tensorrt_version": builder.version,
                "gpu_name": gpu["name"], "compute_capability": gpu["compute_capability"], "precision": precision,
                "fp16_method": getattr(builder, "fp16_method", None) if precision == "fp16" else None,
                "profile": {"min": lo, "opt": opt, "max": hi}, "onnx_sha256": entry["sha256"], "built": _now(),
            })
            results.append({"path_id": entry["id"], "action": "built", "file": rel})
        # Every build succeeded: move engines into place, then rewrite the manifest.
        for e in new_entries:
            dest = bundle / e["file"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / Path(e["file"]).name, dest)
        replaced = {(e["path_id"], e["precision"], e["device"]) for e in new_entries}
        kept = [e for e in manifest.get("engines", []) or [] if (e["path_id"], e.get("precision"), e.get("device")) not in replaced]
        manifest["engines"] = kept + new_entries
        atomic_write_json(bundle / MANIFEST, manifest)
        if timing_cache is not None and cache_bytes:
            atomic_write_bytes(timing_cache, cache_bytes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not had_engines_dir and engines_dir.is_dir() and not any(engines_dir.iterdir()):
            engines_dir.rmdir()  # a failed first build leaves no trace
    return results


def _ensure_dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _progress(items, enabled: bool, label: str):
    if not enabled:
        yield from items
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=len(items))
        for x in items:
            yield x
            bar.advance(task)
