"""TensorRT engines for a bundle, built on the target device: ``build_engines`` (``oat-edge
build-engines``) and the export target that runs it at export time (``--tensorrt auto``: when
TensorRT is installed here; ``on``: an error without TensorRT; ``off``: never).

The TensorRT calls are one thin class in the core (``oat_edge.trt_engine_build``), written
against NVIDIA's documented Python API and import-guarded; the tests marked ``tensorrt`` run it
where TensorRT is installed. Everything around it is tested without TensorRT: the manifest
update (atomic; a failed build leaves the bundle as it was), the fp16 ONNX conversion (run in
onnxruntime) and the no-TensorRT error. The engine entries' format and staleness rules
(``check_engine``, ``find_engine``) are part of the bundle format, ``oat_edge.bundle.engines``.

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
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from oat_edge.bundle.engines import check_engine, engine_device_key
from oat_edge.bundle.manifest import load_manifest, parse_batch_profile
from oat_edge.bundle.names import MANIFEST, SIGNATURE_FILE
from oat_edge.bundle.typed import Manifest, PathEntry
from oat_edge.errors import ConfigError, OatEdgeError
from oat_edge.export.targets.base import ExportTarget
from oat_edge.fileio import PathLike, atomic_write_bytes, atomic_write_json, sha256_file
from oat_edge.host import gpu_info, import_tensorrt, tensorrt_available
from oat_edge.progress import progress as with_progress
from oat_edge.trt_engine_build import TensorRTEngineBuilder, convert_to_fp16, default_workspace_mb

PRECISIONS = ("fp32", "fp16")


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
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bundle = Path(bundle_dir)
    # Engine files are judged by check_engine below (a damaged one is rebuilt, not fatal).
    manifest = load_manifest(bundle, verify_hashes=True, check_engines=False)  # rewritten below
    typed = Manifest.from_dict(manifest)
    builder = TensorRTEngineBuilder() if builder is None else builder
    gpu = gpu_info() if gpu is None else gpu
    if gpu.get("name") in (None, "unknown"):
        raise ConfigError("no CUDA GPU found (the CUDA driver reports none): TensorRT engines are built on the target GPU")
    b = typed.batch
    lo, opt, hi = parse_batch_profile(batch if batch is not None else (b.min, b.opt, b.max))
    chw = typed.model.input_shape
    job = _EngineJob(bundle, precision, builder, gpu, engine_device_key(gpu, builder.version), (lo, opt, hi),
                     {typed.io.images: ((lo, *chw), (opt, *chw), (hi, *chw))},
                     default_workspace_mb(gpu) if workspace_mb is None else workspace_mb, force)
    cache_bytes = None
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()

    engines_dir = bundle / "engines"
    had_engines_dir = engines_dir.is_dir()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_ensure_dir(engines_dir)))
    try:
        results, new_entries, cache_bytes = _build_all(job, typed, staging, cache_bytes, progress)
        _install(bundle, manifest, new_entries, staging)  # every build succeeded
        if timing_cache is not None and cache_bytes:
            atomic_write_bytes(timing_cache, cache_bytes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not had_engines_dir and engines_dir.is_dir() and not any(engines_dir.iterdir()):
            engines_dir.rmdir()  # a failed first build leaves no trace
    return results


@dataclass(frozen=True)
class _EngineJob:
    """What every engine of one ``build_engines`` call shares."""

    bundle: Path
    precision: str
    builder: Any
    gpu: Dict[str, str]
    device: str
    batch: Tuple[int, int, int]
    profile: Dict[str, Any]  # {input name: (min, opt, max) shapes}
    workspace_mb: Optional[int]
    force: bool

    @property
    def batch_profile(self) -> Dict[str, int]:
        return dict(zip(("min", "opt", "max"), self.batch))


def _build_all(job: _EngineJob, manifest: Manifest, staging: Path, cache_bytes, progress: bool):
    """(results, new engine entries, timing cache): each fp32 path's engine is kept when
    current, else built into ``staging``."""
    existing = {(e["path_id"], e.get("precision"), e.get("device")): e for e in manifest.raw.get("engines") or []}
    results, new_entries = [], []
    # Engines are built from the fp32 files (fp16 by builder flag or fp16 copy); the int8 QDQ
    # files are built by hand for now (docs/tensorrt.md, "INT8 (explicit quantization)").
    entries = [e for e in manifest.entries if e.precision == "fp32"]
    for entry in with_progress(entries, progress, f"building {job.precision} engines"):
        old = existing.get((entry.id, job.precision, job.device))
        if old is not None and not job.force and old.get("profile") == job.batch_profile:
            if check_engine(old, job.builder.version, job.gpu, entry.sha256, job.bundle).ok:
                results.append({"path_id": entry.id, "action": "kept", "file": old["file"]})
                continue
        new, cache_bytes = _build_one(job, entry, staging, cache_bytes)
        new_entries.append(new)
        results.append({"path_id": entry.id, "action": "built", "file": new["file"]})
    return results, new_entries, cache_bytes


def _build_one(job: _EngineJob, entry: PathEntry, staging: Path, cache_bytes):
    """(the manifest's engine entry, timing cache) for one path, its engine written to ``staging``."""
    onnx_bytes = (job.bundle / entry.file).read_bytes()
    fp16_method = getattr(job.builder, "fp16_method", "builder-flag")
    if job.precision == "fp16" and fp16_method == "fp16-onnx":
        import onnx

        onnx_bytes = convert_to_fp16(onnx.load_from_string(onnx_bytes)).SerializeToString()
    plan, cache_bytes = job.builder.build(onnx_bytes, job.profile, job.precision, job.workspace_mb, cache_bytes)
    staged = staging / f"{entry.id}.{job.precision}.engine"
    staged.write_bytes(plan)
    return {
        "path_id": entry.id, "kind": entry.kind, "file": f"engines/{job.device}/{staged.name}",
        "sha256": sha256_file(staged), "bytes": staged.stat().st_size, "device": job.device,
        "tensorrt_version": job.builder.version, "gpu_name": job.gpu["name"],
        "compute_capability": job.gpu["compute_capability"], "precision": job.precision,
        "fp16_method": getattr(job.builder, "fp16_method", None) if job.precision == "fp16" else None,
        "profile": job.batch_profile, "onnx_sha256": entry.sha256, "built": _now(),
    }, cache_bytes


def _install(bundle: Path, manifest: Dict[str, Any], new_entries: List[Dict[str, Any]], staging: Path) -> None:
    """Move the staged engines into place, then rewrite the manifest (atomically); a signature
    that no longer covers it is removed."""
    for e in new_entries:
        dest = bundle / e["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / Path(e["file"]).name, dest)
    replaced = {(e["path_id"], e["precision"], e["device"]) for e in new_entries}
    kept = [e for e in manifest.get("engines", []) or [] if (e["path_id"], e.get("precision"), e.get("device")) not in replaced]
    manifest["engines"] = kept + new_entries
    atomic_write_json(bundle / MANIFEST, manifest)
    if (bundle / SIGNATURE_FILE).exists():  # the old signature no longer covers the manifest
        os.unlink(bundle / SIGNATURE_FILE)
        print(f"{bundle}: the manifest changed, its signature was removed: sign it again with "
              f"`oat-edge sign {bundle} --key KEY`")


def _ensure_dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# --- the export target ----------------------------------------------------------------------------
class TensorRTTarget(ExportTarget):
    name = "tensorrt"
    phase = "device"

    def check(self, job) -> None:
        if job.tensorrt == "on":
            import_tensorrt()  # ConfigError now, not after minutes of export

    def wanted(self, job) -> bool:
        return job.tensorrt == "on" or (job.tensorrt == "auto" and tensorrt_available())

    def write(self, job, bundle_dir):
        t0 = time.perf_counter()
        try:
            build_engines(bundle_dir, precision=job.engine_precision, batch=job.batch, progress=job.progress)
        except OatEdgeError as e:
            if job.tensorrt == "on":
                raise
            warnings.warn(f"TensorRT is installed but engines were not built ({e}); run `oat-edge build-engines` "
                          "on the target", RuntimeWarning)
        job.timings["engines"] = time.perf_counter() - t0
        return {}
