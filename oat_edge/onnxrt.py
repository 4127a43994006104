"""ONNX Runtime session set-up, written once: the runtime's onnxruntime backend, the export
parity gate and ``verify`` all open sessions here, so a path runs with the same options
everywhere. onnxruntime is imported when a session is opened, not at import."""

from __future__ import annotations

from typing import Optional

from oat_edge.errors import BundleError
from oat_edge.fileio import PathLike

PROVIDERS = ["CPUExecutionProvider"]


def session_options(threads: Optional[int] = None, spin_wait: bool = False):
    """Options of every session oat-edge opens. ``spin_wait`` (onnxruntime's
    session.intra_op.allow_spinning, which onnxruntime turns on by default) is off here: a runtime
    holds a session per path and per baked mode, each with its own pool of intra-op threads, and a
    pool that just ran keeps spinning on cores the next session needs. Holding one mode, spinning
    lowers the median, which is what ``spin_wait=True`` is for (docs/benchmarking.md, "Spin-wait
    between sessions"). With one thread there is no pool and it changes nothing."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    so.inter_op_num_threads = 1  # our graphs are a single chain: no inter-op parallelism to gain
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    return so


def open_session(file: PathLike, threads: Optional[int] = None, options=None, providers=None, data=None,
                 external=()):
    """An InferenceSession of one ONNX file (the CPU provider unless ``providers``, a list from
    ``resolve_providers``); BundleError when onnxruntime cannot load it. ``data``: the file's
    bytes, already verified (then the file is not reopened), with ``external`` its external
    data as [(location, bytes)], handed to onnxruntime from memory too."""
    import onnxruntime as ort

    try:
        names = [p for p, _ in providers] if providers else PROVIDERS
        opts = [o for _, o in providers] if providers else None
        options = options or session_options(threads)
        if external:
            # a session of its own options: the in-memory files must not leak into other sessions
            spin = options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
            options = session_options(options.intra_op_num_threads or None, spin)
            options.add_external_initializers_from_files_in_memory(
                [loc for loc, _ in external], [buf for _, buf in external], [len(buf) for _, buf in external])
        return ort.InferenceSession(data if data is not None else str(file), options, providers=names,
                                    provider_options=opts)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else e
        raise BundleError(f"onnxruntime cannot load {file}: {first}") from None


# --- execution providers (Runtime(..., providers=[...]), --providers) ----------------------------

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
TRT_CACHE_DIR = "onnxruntime-trt"  # under the bundle's engines/ folder
TRT_STAMP = "stamp.json"


def provider_name(name: str) -> str:
    """'cuda' / 'CUDA' / 'CUDAExecutionProvider' -> 'CUDAExecutionProvider'."""
    from oat_edge.errors import ConfigError

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"an execution provider is a name such as cpu, cuda or tensorrt; got {name!r}")
    key = name.strip()
    full = PROVIDER_NAMES.get(key.lower())
    if full:
        return full
    if key.endswith("ExecutionProvider"):
        return key
    raise ConfigError(f"unknown execution provider {name!r}; use cpu, cuda, tensorrt or a full onnxruntime "
                      "name such as CUDAExecutionProvider")


def trt_cache_dir(bundle_dir: PathLike) -> "Path":
    """Where the TensorRT EP keeps its engines: ``engines/onnxruntime-trt/ort<version>/`` in the
    bundle (one folder per onnxruntime version: engines of another version are never reused)."""
    from pathlib import Path

    import onnxruntime as ort

    return Path(bundle_dir) / "engines" / TRT_CACHE_DIR / f"ort{ort.__version__}"


def _stamp_cache(folder, onnx_sha256: dict) -> None:
    """Record which ONNX files and which onnxruntime the cached engines belong to; a cache left
    by other ONNX files (a re-exported bundle) is emptied first."""
    import json
    import shutil

    import onnxruntime as ort

    from oat_edge.fileio import atomic_write_json

    stamp = {"onnxruntime": ort.__version__, "onnx_sha256": dict(sorted(onnx_sha256.items()))}
    path = folder / TRT_STAMP
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old == stamp:
            return
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, stamp)


def resolve_providers(providers, bundle_dir=None, onnx_sha256: Optional[dict] = None, device_id: int = 0):
    """onnxruntime's ``providers`` list for InferenceSession: [(full name, options), ...].

    Each item is a name ('cpu', 'cuda', 'tensorrt' or a full provider name) or a
    (name, options) pair whose options override ours. Defaults: CUDA ``device_id``; TensorRT
    ``device_id``, FP16 on, the engine cache (and timing cache) inside the bundle at
    ``engines/onnxruntime-trt/ort<version>/`` with a ``stamp.json``. The CPU provider is
    appended when missing, as the fallback for nodes the others do not take. A provider this
    onnxruntime build lacks is a DependencyError naming the available ones."""
    from oat_edge.errors import ConfigError, DependencyError

    import onnxruntime as ort

    if providers is None:
        return [(name, {}) for name in PROVIDERS]
    if isinstance(providers, str):
        providers = [providers]
    available = set(ort.get_available_providers())
    out = []
    for item in providers:
        name, user = (item[0], dict(item[1])) if isinstance(item, (tuple, list)) else (item, {})
        full = provider_name(name)
        if full not in available:
            raise DependencyError(
                f"execution provider {full} is not available in this onnxruntime ({ort.__version__}; available: "
                f"{', '.join(sorted(available))}); install onnxruntime-gpu (desktop) or NVIDIA's JetPack build of it "
                "(docs/deploy.md)")
        options = {}
        if full == "CUDAExecutionProvider":
            options = {"device_id": int(device_id)}
        elif full == "TensorrtExecutionProvider":
            options = {"device_id": int(device_id), "trt_fp16_enable": True}
            if bundle_dir is not None:
                folder = trt_cache_dir(bundle_dir)
                _stamp_cache(folder, onnx_sha256 or {})
                options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(folder),
                               trt_timing_cache_enable=True, trt_timing_cache_path=str(folder))
        options.update(user)
        if any(full == f for f, _ in out):
            raise ConfigError(f"execution provider {full} is listed twice")
        out.append((full, options))
    if not any(f == "CPUExecutionProvider" for f, _ in out):
        out.append(("CPUExecutionProvider", {}))
    return out
