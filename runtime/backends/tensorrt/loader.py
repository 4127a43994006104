"""Loading a bundle's TensorRT engines: which engine runs each path on this machine, refusing
stale or foreign ones (another TensorRT version, another GPU, built from an older ONNX file,
tampered) before any engine is deserialised — by the bundle contract's rules
(``oat_edge.bundle.engines``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from oat_edge.bundle.engines import engine_staleness, find_engine
from oat_edge.errors import BundleError, ConfigError
from oat_edge.host import gpu_present, probe_environment, tensorrt_importable
from oat_edge.runtime.backends.base import BundleContext, PathSpec


def available() -> Tuple[bool, str]:
    if not tensorrt_importable():
        return False, "TensorRT is not installed"
    if not gpu_present():
        return False, "no CUDA GPU found"
    return True, ""


def select_engines(manifest: Dict[str, Any], bundle_dir, paths: Sequence[PathSpec], env: Dict[str, Any],
                   precision: Optional[str] = None) -> List[Dict[str, Any]]:
    """The engine entry for every path, in path order. BundleError naming the path and how to
    rebuild when any path lacks a usable engine on this machine (``env``: {"tensorrt_version",
    "gpu": {"name", "compute_capability"}}, from ``oat_edge.host.probe_environment``)."""
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


def auto_rule(importable: Callable[[], bool], gpu: Callable[[], bool],
              engines: Callable[[], Tuple[bool, str]]) -> Tuple[bool, str]:
    """Whether ``auto`` picks TensorRT: importable, a GPU, current engines — probed in that
    order, each only when the previous one passed."""
    if not importable():
        return False, "TensorRT is not installed"
    if not gpu():
        return False, "no CUDA GPU found"
    ok, detail = engines()
    if ok:
        return True, "TensorRT, a GPU and current engines are present"
    return False, f"no usable TensorRT engines ({detail})"


def auto_check(ctx: BundleContext, paths: Sequence[PathSpec]) -> Tuple[bool, str]:
    def engines():
        try:
            env = probe_environment()
        except (ConfigError, ImportError) as e:
            return False, str(e)
        return engines_usable(ctx.manifest, ctx.dir, paths, env)

    return auto_rule(tensorrt_importable, gpu_present, engines)


def bundle_report(manifest: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Staleness of every engine of the bundle on this machine (for ``verify``); engines are
    listed as not checked where TensorRT is not importable."""
    if not manifest.get("engines"):
        return []
    try:
        env = probe_environment()
    except ConfigError as e:  # no TensorRT here (e.g. verifying a Jetson bundle on a laptop)
        return engine_staleness(manifest, None, str(e))
    return engine_staleness(manifest, env)
