"""TensorRT engines in a bundle (docs/bundle.md "engines"): what an engine entry records and
when an engine may run on this machine. ``oat-edge build-engines`` (export stage) writes the
entries; the runtime's TensorRT backend and ``verify`` read them. No TensorRT import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

from oat_edge.bundle.manifest import onnx_sha256
from oat_edge.errors import BundleError
from oat_edge.fileio import PathLike, sha256_file
from oat_edge.host import slug

REBUILD_HINT = "rebuild it on this device with `oat-edge build-engines {bundle}`"


def _slug(text: str) -> str:
    return slug(text, max_len=0, fallback="gpu")


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
    onnx_sha = onnx_sha256(manifest).get(path_id)
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




def engine_staleness(manifest: Dict[str, Any], env: Optional[Dict[str, Any]], why_unchecked: str = "") -> list:
    """For each engine entry: {"path_id", "file", "ok", "reason"} — whether it fits this
    machine's TensorRT and GPU (``env`` from ``oat_edge.host.probe_environment``); with no
    ``env`` (no TensorRT here) every engine is listed as not checked (ok None)."""
    engines = manifest.get("engines", []) or []
    if env is None:
        return [{"path_id": e["path_id"], "file": e["file"], "ok": None, "reason": why_unchecked} for e in engines]
    sha = onnx_sha256(manifest)
    out = []
    for e in engines:
        check = check_engine(e, env["tensorrt_version"], env["gpu"], sha.get(e["path_id"]))
        out.append({"path_id": e["path_id"], "file": e["file"], "ok": check.ok, "reason": check.reason})
    return out
