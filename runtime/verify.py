"""``verify``: check a bundle on this machine — after copying it to a device — through the
runtime's own backends, so a bundle can be checked on the backend it will run on (TensorRT
included).

1. the bundle loaded by ``Runtime`` itself (signature, schema, files, sha256, FiLM tables,
   graphs): whatever the Runtime refuses, verify refuses;
2. every path and baked path the parity reference names, run through that Runtime at the
   stored λ values (by ``set_mode`` + ``infer`` where the mode routes to the entry, else by path
   id with the Runtime's FiLM vector), against the PyTorch logits recorded at export:
   max |Δlogit| ≤ tolerance × max(1, |logit|) and identical top-1.
3. the staleness of TensorRT engines on this machine (where TensorRT is importable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from oat_edge.bundle.manifest import VERIFY_TOL, manifest_files
from oat_edge.bundle.names import MANIFEST
from oat_edge.errors import BundleError
from oat_edge.fileio import PathLike
from oat_edge.runtime import backends as registry

NO_RUN = "none"  # hashes and structure only


def compare(ref: np.ndarray, out: np.ndarray) -> Dict[str, float]:
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    top1 = float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1))) if ref.size else 1.0
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    return {"max_abs_diff": diff, "top1_agreement": top1, "scale": scale}


def verify_bundle(bundle_dir: PathLike, backend: str = "onnxruntime", threads: Optional[int] = None,
                  tolerance: float = VERIFY_TOL, device: Optional[str] = None, trusted_keys=None,
                  min_signed_at=None) -> Dict[str, Any]:
    """Check a bundle on this machine; BundleError on the first failure, else a report:
    {"bundle", "files": n, "backend", "signer", "checks": [{"id", "lam", "max_abs_diff", "top1_agreement",
    "ok", "via"}], "engines": [...staleness of engines, when TensorRT is importable...]}.

    The bundle is loaded by ``Runtime`` itself — the same manifest schema, signature
    (``trusted_keys``), hash, FiLM-table, latency-profile and graph checks, the same runner — so
    whatever the Runtime refuses, verify refuses. ``backend``: a registered backend or "auto"
    (rerun every parity entry there: by ``set_mode`` + ``infer`` where the Runtime routes that
    mode to the entry, else by path id), or "none" (load on onnxruntime, rerun nothing)."""
    import warnings

    from oat_edge.errors import ConfigError
    from oat_edge.runtime.runtime import Runtime
    from oat_edge.bundle.safe_files import read_manifest_bytes
    from oat_edge.bundle.signature import UnsignedBundleWarning, check_signature

    registry.check_backend_name(backend, extra=(NO_RUN,))
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    bundle = Path(bundle_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsignedBundleWarning)  # the report names the signer itself
        rt = Runtime(bundle, backend="onnxruntime" if backend == NO_RUN else backend, threads=threads,
                     device=None if backend == NO_RUN else device, verify=True, trusted_keys=trusted_keys,
                     min_signed_at=min_signed_at)
    try:
        manifest = rt.manifest
        signer = check_signature(bundle, read_manifest_bytes(bundle, MANIFEST), trusted_keys)
        report: Dict[str, Any] = {"bundle": str(bundle), "files": len(manifest_files(manifest)),
                                  "backend": backend if backend == NO_RUN else rt.backend_name,
                                  "signer": signer, "checks": []}
        _check_latency_profiles(bundle)
        report["engines"] = _engine_reports(manifest)
        if backend == NO_RUN:
            return report
        ref, images = _parity_reference(rt, bundle)
        failures = []
        for item in manifest["parity_reference"]["entries"]:
            check = _check_entry(rt, bundle, ref, images, item, tolerance)
            report["checks"].append(check)
            if not check["ok"]:
                failures.append(f"{item['id']} at λ={item['lam']:g}: max |Δ| {check['max_abs_diff']:.3g}, "
                                f"top-1 {check['top1_agreement']:.0%}")
        if failures:
            raise BundleError(f"{bundle}: outputs on {rt.backend_name} differ from the exported reference: "
                              + "; ".join(failures))
        return report
    finally:
        rt.close()


def _check_latency_profiles(bundle: Path) -> None:
    """Every latency profile, not only this device's: the Runtime of another device reads its own."""
    from oat_edge.bundle.latency import read_latency_profile

    profiles = bundle / "latency"
    if profiles.is_symlink():
        raise BundleError(f"{bundle}: latency/ is a symlink")
    if profiles.is_dir():
        for prof in sorted(profiles.glob("*.json")):
            read_latency_profile(bundle, prof.stem)


def _engine_reports(manifest: dict) -> list:
    """Device artifacts (TensorRT engines): their backend says whether they fit here."""
    out = []
    for b in registry.REGISTRY.values():
        bundle_report = getattr(b.loader(), "bundle_report", None)
        if bundle_report is not None:
            out += bundle_report(manifest)
    return out


def _parity_reference(rt, bundle: Path):
    """(the parity.npz arrays, its float32 [N, C, H, W] images), checked against the bundle."""
    from oat_edge.errors import OatEdgeError
    from oat_edge.bundle.safe_files import inside, load_npz

    ref_info = rt.manifest.get("parity_reference")
    if not ref_info:
        raise BundleError(f"{bundle} has no parity reference (parity.npz); re-export it with this oat-edge")
    ref = load_npz(inside(bundle, ref_info["file"], "parity reference"), f"{bundle}: parity reference")
    images = ref.get("images")
    if images is None or images.dtype != np.float32 or images.ndim != 4 or images.shape[0] < 1:
        raise BundleError(f"{bundle}: parity reference has no float32 [N, C, H, W] images")
    try:
        rt._checker.numpy(images[: rt.io.batch_max])
    except OatEdgeError as e:
        raise BundleError(f"{bundle}: parity reference images do not fit this bundle: {e}") from None
    return ref, images


def _check_entry(rt, bundle: Path, ref, images: np.ndarray, item: dict, tolerance: float) -> Dict[str, Any]:
    """One parity entry rerun through the Runtime: by ``set_mode`` + ``infer`` where the mode
    routes to the entry (exactly what an application runs), else by path id."""
    spec = rt.backend.path(item["id"])
    key = item["key"]
    expected = ref.get(key)
    if expected is None:
        raise BundleError(f"{bundle}: parity reference lacks {key}")
    lam = float(item["lam"]) if spec.lam is None else spec.lam
    routed = rt.path_for(lam, spec.width) == spec.id
    out = []
    for i in range(0, images.shape[0], rt.io.batch_max):
        chunk = images[i:i + rt.io.batch_max]
        if routed:
            rt.set_mode(lam, spec.width)
            out.append(np.asarray(rt.infer(chunk)))
        else:
            out.append(rt.backend.infer_path(spec.id, chunk, rt.film_vector(lam, spec.width)
                                             if spec.has_film else None))
    out = np.concatenate(out)
    if expected.shape != out.shape:
        raise BundleError(f"{bundle}: parity reference {key} has shape {list(expected.shape)}, "
                          f"the path gives {list(out.shape)}")
    cmp = compare(expected, out)
    ok = cmp["max_abs_diff"] <= tolerance * cmp["scale"] and cmp["top1_agreement"] == 1.0
    return {"id": item["id"], "lam": item["lam"], **cmp, "ok": ok, "via": "mode" if routed else "path"}


def render_verify(report: Dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"{report['bundle']}: {report['files']} files match their sha256")
    if report["checks"]:
        t = Table(title=f"outputs on {report['backend']} vs export-time PyTorch logits")
        for col in ("path", "λ", "max |Δlogit|", "top-1", "ok"):
            t.add_column(col)
        for c in report["checks"]:
            t.add_row(c["id"], f"{c['lam']:g}", f"{c['max_abs_diff']:.2e}", f"{c['top1_agreement']:.0%}",
                      "yes" if c["ok"] else "NO")
        console.print(t)
    for e in report.get("engines", []):
        state = "current" if e["ok"] else ("not checked" if e["ok"] is None else "STALE")
        console.print(f"engine {e['path_id']}: {state}" + ("" if e["ok"] else f" — {e['reason']}"))
    console.print("[green]bundle verified[/green]")
