"""Latency profiles (docs/benchmarking.md "Latency profile"): ``BUNDLE/latency/{device_key}.json``,
written by ``oat-edge bench`` on a device and read by ``Runtime.select`` on the same kind of
device. The writer and the reader of the format live here, together.

    {"device_key", "backend", "device": {...}, "threads", "created",
     "bench": {"rounds", "duration_s", "statistic"},
     "records": [{"lam", "width", "batch", "path": "film" | "baked", "p50_ms",
                  "p90_ms", "p99_ms", "throughput_ips", "precision"}, ...]}

A record without "precision" is fp32 (profiles written before precisions existed).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from oat_edge.bundle.names import LATENCY_DIR
from oat_edge.errors import BundleError
from oat_edge.fileio import PathLike, atomic_write_json
from oat_edge.mode import bn_branch, same_lambda, same_width

PROFILE_FIELDS = ("lam", "width", "batch", "path", "p50_ms")
OPTIONAL_FIELDS = ("p90_ms", "p99_ms", "throughput_ips", "precision")
DEVICE_FIELDS = ("cpu_model", "machine", "logical_cpus", "gpu", "jetson")


def profile_path(bundle_dir: PathLike, key: str) -> Path:
    return Path(bundle_dir) / LATENCY_DIR / f"{key}.json"


def make_profile(device_key: str, backend: str, device: Dict[str, Any], threads: Optional[int], created: str,
                 rounds: int, duration_s: float, records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A profile document; ``records`` carry PROFILE_FIELDS and OPTIONAL_FIELDS."""
    return {"device_key": device_key, "backend": backend,
            "device": {k: device.get(k) for k in DEVICE_FIELDS if device.get(k) is not None},
            "threads": threads, "created": created,
            "bench": {"rounds": rounds, "duration_s": duration_s, "statistic": "median across rounds"},
            "records": [{k: r[k] for k in PROFILE_FIELDS + OPTIONAL_FIELDS if k in r} for r in records]}


def write_latency_profile(profile: Dict[str, Any], bundle_dir: PathLike, fallback_dir: Optional[PathLike] = None) -> dict:
    """Write BUNDLE/latency/{device_key}.json atomically. A read-only bundle gets a warning and
    the file goes to ``fallback_dir`` (default: the working folder) instead. Returns {"path",
    "in_bundle", "warning"}."""
    target = profile_path(bundle_dir, profile["device_key"])
    try:
        if not os.access(bundle_dir, os.W_OK) or (target.parent.exists() and not os.access(target.parent, os.W_OK)):
            raise PermissionError(f"{target.parent} is not writable")
        atomic_write_json(target, profile)
        return {"path": str(target), "in_bundle": True, "warning": None}
    except OSError as e:
        where = Path(fallback_dir) if fallback_dir else Path.cwd()
        alt = where / LATENCY_DIR / target.name
        atomic_write_json(alt, profile)
        msg = (f"bundle folder {bundle_dir} is not writable ({e}); wrote the latency profile to {alt} — "
               f"copy it to {target} for Runtime.select to use it")
        warnings.warn(msg, stacklevel=2)
        return {"path": str(alt), "in_bundle": False, "warning": msg}


def profile_latency(profile: Optional[dict], lam: float, width: float, batch: int, kind: str,
                    precision: str = "fp32", quantile: str = "p50") -> Optional[float]:
    """The ``quantile`` ("p50", "p90", "p99") latency (ms) of mode (λ, width, precision) at
    ``batch`` on its path ``kind`` ("film" | "baked") from a profile read by
    ``read_latency_profile``: the record of that exact mode, else — for a FiLM path, whose
    latency depends on its BN branch and width but not on λ — the median over the records of
    the same BN branch; None when the profile has neither (or its records lack that quantile)."""
    if not profile:
        return None
    field = f"{quantile}_ms"
    recs = [r for r in profile["records"] if r["batch"] == batch and r["path"] == kind and same_width(r["width"], width)
            and (r.get("precision") or "fp32") == precision and isinstance(r.get(field), (int, float))]
    exact = [r[field] for r in recs if same_lambda(r["lam"], lam)]
    if exact:
        return float(exact[0])
    if kind == "film":
        same = sorted(r[field] for r in recs if bn_branch(r["lam"]) == bn_branch(lam))
        if same:
            return float(statistics.median(same))
    return None


def read_latency_profile(bundle_dir: PathLike, key: str, data: Optional[bytes] = None) -> Optional[dict]:
    """The latency profile ``BUNDLE/latency/{key}.json`` (or ``data``, its bytes as verified)
    or None when there is none. A profile that exists but is malformed is an error
    (BundleError), not silently ignored."""
    path = profile_path(bundle_dir, key)
    if data is None:
        if path.is_symlink() or path.parent.is_symlink():
            raise BundleError(f"latency profile {path} is a symlink; a bundle must hold its files itself")
        if not path.is_file():
            return None
    try:
        data = json.loads((path.read_bytes() if data is None else data).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"latency profile {path} is not readable JSON ({e}); rerun `oat-edge bench`") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise BundleError(f"latency profile {path} has no 'records' list; rerun `oat-edge bench`")
    if data.get("device_key") not in (None, key):
        raise BundleError(f"latency profile {path} is for device {data.get('device_key')!r}, not {key!r}")
    clean = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or any(f not in r for f in PROFILE_FIELDS):
            raise BundleError(f"latency profile {path}: record {i} lacks one of {PROFILE_FIELDS}")
        try:
            rec = {"lam": float(r["lam"]), "width": float(r["width"]), "batch": int(r["batch"]),
                   "path": str(r["path"]), "p50_ms": float(r["p50_ms"])}
        except (TypeError, ValueError):
            raise BundleError(f"latency profile {path}: record {i} has non-numeric values") from None
        if not (math.isfinite(rec["p50_ms"]) and rec["p50_ms"] >= 0):
            raise BundleError(f"latency profile {path}: record {i} has an invalid p50_ms")
        for extra in OPTIONAL_FIELDS:
            if extra in r:
                rec[extra] = r[extra]
        if rec.get("precision", "fp32") not in ("fp32", "fp16", "int8"):
            raise BundleError(f"latency profile {path}: record {i} has an unknown precision {rec['precision']!r}")
        clean.append(rec)
    return {**data, "records": clean, "file": str(path)}
