"""``verify``: check a bundle on this machine — after copying it to a device — through the
runtime's own backends, so a bundle can be checked on the backend it will run on (TensorRT
included).

1. every file's sha256 against the manifest, the FiLM tables against the manifest;
2. every path and baked path the parity reference names, run by the backend's runner at the
   stored λ values (BN paths fed ``film_vector`` of the bundle's tables), against the PyTorch
   logits recorded at export: max |Δlogit| ≤ tolerance × max(1, |logit|) and identical top-1.
3. the staleness of TensorRT engines on this machine (where TensorRT is importable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from oat_edge.bundle.film import check_film_tables, film_vector, load_film_tables
from oat_edge.bundle.manifest import VERIFY_TOL, load_manifest, manifest_files
from oat_edge.errors import BundleError
from oat_edge.fileio import PathLike
from oat_edge.runtime import backends as registry
from oat_edge.runtime.backends.base import BundleContext

NO_RUN = "none"  # hashes and structure only


def compare(ref: np.ndarray, out: np.ndarray) -> Dict[str, float]:
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    top1 = float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1))) if ref.size else 1.0
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    return {"max_abs_diff": diff, "top1_agreement": top1, "scale": scale}


def verify_bundle(bundle_dir: PathLike, backend: str = "onnxruntime", threads: Optional[int] = None,
                  tolerance: float = VERIFY_TOL, device: Optional[str] = None) -> Dict[str, Any]:
    """Check a bundle on this machine; BundleError on the first failure, else a report:
    {"bundle", "files": n, "backend", "checks": [{"id", "lam", "max_abs_diff", "top1_agreement", "ok"}],
    "engines": [...staleness of engines, when TensorRT is importable...]}.

    ``backend``: a registered backend or "auto" (rerun the paths there), or "none" (hashes and
    structure only)."""
    registry.check_backend_name(backend, extra=(NO_RUN,))
    bundle = Path(bundle_dir)
    manifest = load_manifest(bundle, verify_hashes=True)
    tables = load_film_tables(bundle / manifest["film"]["file"])
    widths = sorted({float(e["width"]) for e in manifest["paths"]})
    check_film_tables(tables, widths, manifest["film"]["sizes"])
    report: Dict[str, Any] = {"bundle": str(bundle), "files": len(manifest_files(manifest)), "backend": backend,
                              "checks": []}
    report["engines"] = []  # device artifacts (TensorRT engines): their backend says whether they fit here
    for b in registry.REGISTRY.values():
        bundle_report = getattr(b.loader(), "bundle_report", None)
        if bundle_report is not None:
            report["engines"] += bundle_report(manifest)
    if backend == NO_RUN:
        return report
    ref_info = manifest.get("parity_reference")
    if not ref_info:
        raise BundleError(f"{bundle} has no parity reference (parity.npz); re-export it with this oat-edge")
    try:
        with np.load(bundle / ref_info["file"], allow_pickle=False) as z:
            ref = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise BundleError(f"{bundle}: parity reference unreadable: {e}") from None
    images = ref.get("images")
    if images is None:
        raise BundleError(f"{bundle}: parity reference has no images")
    runner, name = _runner(manifest, bundle, backend, threads, device)
    report["backend"] = name
    failures = []
    try:
        for item in ref_info["entries"]:
            try:
                spec = runner.path(item["id"])
            except BundleError:
                raise BundleError(f"{bundle}: parity reference names unknown path {item['id']!r}") from None
            key = item["key"]
            if key not in ref:
                raise BundleError(f"{bundle}: parity reference lacks {key}")
            film = film_vector(tables, item["lam"], spec.width) if spec.has_film else None
            out = runner.infer_path(spec.id, images, film)
            cmp = compare(ref[key], out)
            ok = cmp["max_abs_diff"] <= tolerance * cmp["scale"] and cmp["top1_agreement"] == 1.0
            report["checks"].append({"id": item["id"], "lam": item["lam"], **cmp, "ok": ok})
            if not ok:
                failures.append(f"{item['id']} at λ={item['lam']:g}: max |Δ| {cmp['max_abs_diff']:.3g}, "
                                f"top-1 {cmp['top1_agreement']:.0%}")
    finally:
        runner.close()
    if failures:
        raise BundleError(f"{bundle}: outputs on {name} differ from the exported reference: " + "; ".join(failures))
    return report


def _runner(manifest, bundle: Path, backend: str, threads, device):
    """A runner of the chosen backend holding every path and baked path of the bundle."""
    from oat_edge.runtime.runtime import bundle_io, bundle_paths

    io = bundle_io(manifest, bundle)
    paths, _table = bundle_paths(manifest, bundle)
    context = BundleContext(manifest, bundle, None)
    name, _why = registry.choose_backend(backend, device, lambda b: b.loader().auto_check(context, paths))
    return registry.runner_class(name)(paths, io, threads=threads, device=device, bundle=context), name


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
