"""TensorRT engines for a bundle (``oat-edge build-engines``), built on the target device.

The TensorRT calls are kept in one thin class (``TensorRTEngineBuilder``), written against
NVIDIA's documented Python API and import-guarded; the tests marked ``tensorrt`` run it where
TensorRT is installed. Everything around it is tested without TensorRT: the manifest update
(atomic; a failed build leaves the bundle as it was), the fp16 ONNX conversion (run in
onnxruntime) and the no-TensorRT error. The engine entries' format and staleness rules
(``check_engine``, ``find_engine``) are part of the bundle contract, ``oat_edge.bundle.engines``.

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
from pathlib import Path
from typing import Any, Dict, List, Optional

from oat_edge.bundle.engines import (  # noqa: F401  (the engine contract, re-exported for the builder's users)
    ENGINE_KEYS, REBUILD_HINT, EngineCheck, check_engine, engine_device_key, find_engine,
)
from oat_edge.bundle.manifest import MANIFEST, iter_entries, load_manifest, parse_batch_profile  # noqa: F401
from oat_edge.errors import BundleError, ConfigError
from oat_edge.fileio import PathLike, atomic_write_bytes, atomic_write_json, sha256_file
from oat_edge.host import (  # noqa: F401  (probes of this machine, re-exported for the builder's users)
    gpu_info, import_tensorrt, is_jetson, probe_environment, tensorrt_available, total_memory_bytes,
)
from oat_edge.progress import progress as _progress

PRECISIONS = ("fp32", "fp16")


# The TensorRT calls and the fp16 ONNX copy live in core (the runtime's refit baking builds
# engines too); re-exported here for the builder's users.
from oat_edge.tensorrt_build import (  # noqa: E402,F401
    FP16_MAX, JETSON_WORKSPACE_CAP_MB, TensorRTEngineBuilder, convert_to_fp16, default_workspace_mb,
)


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
    manifest = load_manifest(bundle, verify_hashes=True, check_engines=False)
    if builder is None:
        builder = TensorRTEngineBuilder()
    if gpu is None:
        gpu = gpu_info()
    if gpu.get("name") in (None, "unknown"):
        raise ConfigError("no CUDA GPU found (the CUDA driver reports none): TensorRT engines are built on the target GPU")
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
        # Engines are built from the fp32 files (fp16 by builder flag or fp16 copy); the int8 QDQ
        # files are built by hand for now (docs/tensorrt.md, "INT8 (explicit quantization)").
        entries = [e for e in iter_entries(manifest) if (e.get("precision") or "fp32") == "fp32"]
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
        from oat_edge.signing import SIGNATURE_FILE

        if (bundle / SIGNATURE_FILE).exists():  # the old signature no longer covers the manifest
            os.unlink(bundle / SIGNATURE_FILE)
            print(f"{bundle}: the manifest changed, its signature was removed: sign it again with "
                  f"`oat-edge sign {bundle} --key KEY`")
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
