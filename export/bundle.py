"""Reading and checking bundles (docs/bundle.md) — numpy and onnxruntime only, never torch:
this is what a Jetson user runs after copying a bundle, and what the runtime builds on.

- ``load_manifest(bundle_dir, verify_hashes=True)``: the manifest, after checking its schema
  and that every file it names exists inside the bundle with the recorded sha256.
- ``verify_bundle(bundle_dir, backend="onnxruntime")``: hashes, then every path and baked path
  rerun on the backend at the λ values stored in ``parity.npz`` against the PyTorch logits
  recorded at export time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

from oat_edge.errors import BundleError, ModeError, OatEdgeError
from oat_edge.fileio import PathLike, sha256_file
from oat_edge.mode import check_lambda, fmt_width, match_width

SCHEMA = "oat-edge/bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FILM_FILE = "film.npz"
PARITY_FILE = "parity.npz"
REQUIRED = ("schema", "schema_version", "tools", "model", "io", "batch", "paths", "film")
LAMBDA_TOL = 1e-9
# verify: max |Δlogit| allowed against the export-time PyTorch logits, relative to their scale
# (another CPU's kernels sum in another order; fp32 keeps that far below this).
VERIFY_TOL = 1e-4


def path_id(bn: str, width: float) -> str:
    return f"{bn}_w{fmt_width(width)}"


def baked_id(lam: float, width: float) -> str:
    return f"lam{float(lam):g}_w{fmt_width(width)}"


def parity_key(entry_id: str, lam: float) -> str:
    return f"logits__{entry_id}__lam{float(lam):g}"


def _safe_relpath(bundle: Path, rel: Any, what: str) -> Path:
    """A manifest names files relative to the bundle; refuse anything that escapes it."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"manifest entry {what} has no file name")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise BundleError(f"manifest entry {what} names {rel!r}, which is outside the bundle")
    return bundle.joinpath(*p.parts)


def manifest_files(manifest: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every file the manifest names, as {"what", "file", "sha256"}."""
    out = []
    for e in manifest.get("paths", []):
        out.append({"what": f"path {e.get('id')}", "file": e.get("file"), "sha256": e.get("sha256")})
    for e in manifest.get("baked", []) or []:
        out.append({"what": f"baked path {e.get('id')}", "file": e.get("file"), "sha256": e.get("sha256")})
    film = manifest.get("film") or {}
    out.append({"what": "FiLM tables", "file": film.get("file"), "sha256": film.get("sha256")})
    ref = manifest.get("parity_reference")
    if ref:
        out.append({"what": "parity reference", "file": ref.get("file"), "sha256": ref.get("sha256")})
    for e in manifest.get("engines", []) or []:
        out.append({"what": f"engine {e.get('path_id')} ({e.get('precision')})", "file": e.get("file"), "sha256": e.get("sha256")})
    return out


def load_manifest(bundle_dir: PathLike, verify_hashes: bool = True, check_engines: bool = True) -> Dict[str, Any]:
    """The manifest of a bundle; BundleError for a missing folder or manifest, invalid JSON, an
    unknown schema, missing keys, a file outside the bundle, a missing file, or (with
    ``verify_hashes``) a file whose sha256 differs from the recorded one. ``check_engines=False``
    leaves engine files to the caller (``build-engines`` replaces damaged ones)."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist (export one with `oat-edge export CKPT -o {bundle}`)")
    mpath = bundle / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{bundle} is not an oat-edge bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); the bundle is damaged, re-export it") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{mpath} is not an oat-edge bundle manifest (schema {manifest.get('schema') if isinstance(manifest, dict) else None!r})")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{bundle} has bundle schema version {manifest.get('schema_version')!r}; this oat-edge reads "
            f"version {SCHEMA_VERSION}: re-export it with this version's `oat-edge export`"
        )
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{mpath} lacks required keys {missing}")
    if not manifest["paths"]:
        raise BundleError(f"{mpath} lists no paths")
    for item in manifest_files(manifest):
        if not check_engines and item["what"].startswith("engine"):
            continue
        target = _safe_relpath(bundle, item["file"], item["what"])
        if not target.is_file():
            raise BundleError(f"{bundle}: {item['what']} file {item['file']} is missing; the bundle is incomplete")
        if verify_hashes:
            if not isinstance(item["sha256"], str) or sha256_file(target) != item["sha256"]:
                hint = (
                    "rebuild engines with `oat-edge build-engines " + str(bundle) + " --force`"
                    if item["what"].startswith("engine") else "re-export the bundle"
                )
                raise BundleError(
                    f"{bundle}: {item['what']} file {item['file']} does not match its sha256 in the manifest "
                    f"(tampered with or truncated); {hint}"
                )
    return manifest


def select_entry(manifest: Dict[str, Any], lam, width) -> Dict[str, Any]:
    """The manifest entry that runs mode (λ, width), per docs/bundle.md "Modes → files":
    a baked entry of that exact mode if there is one, else the BN path of the width.
    Returns a copy with ``"kind": "baked" | "path"``."""
    lam = check_lambda(lam)
    width = match_width(width, manifest["model"]["widths"])
    for e in manifest.get("baked", []) or []:
        if abs(float(e["lam"]) - lam) <= LAMBDA_TOL and abs(float(e["width"]) - width) <= 1e-6:
            return dict(e, kind="baked")
    bn = "c" if lam == 0.0 else "a"
    for e in manifest["paths"]:
        if e["bn"] == bn and abs(float(e["width"]) - width) <= 1e-6:
            return dict(e, kind="path")
    raise ModeError(f"the bundle has no {'BN_c' if bn == 'c' else 'BN_a'} path for width {fmt_width(width)}")


def _ort_session(path: Path, threads: Optional[int] = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _compare(ref: np.ndarray, out: np.ndarray) -> Dict[str, float]:
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    top1 = float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1))) if ref.size else 1.0
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    return {"max_abs_diff": diff, "top1_agreement": top1, "scale": scale}


def verify_bundle(bundle_dir: PathLike, backend: str = "onnxruntime", threads: Optional[int] = None,
                  tolerance: float = VERIFY_TOL) -> Dict[str, Any]:
    """Check a bundle on this machine; BundleError on the first failure, else a report:
    {"bundle", "files": n, "backend", "checks": [{"id", "lam", "max_abs_diff", "top1_agreement", "ok"}],
    "engines": [...staleness of engines, when TensorRT is importable...]}.

    ``backend``: "onnxruntime" (reruns every path and baked path against the stored PyTorch
    logits) or "none" (hashes and structure only).
    """
    if backend not in ("onnxruntime", "none"):
        raise BundleError(f"verify backend must be 'onnxruntime' or 'none', got {backend!r}")
    bundle = Path(bundle_dir)
    manifest = load_manifest(bundle, verify_hashes=True)
    from oat_edge.export.film_tables import check_film_tables, film_vector, load_film_tables

    tables = load_film_tables(bundle / manifest["film"]["file"])
    widths = sorted({float(e["width"]) for e in manifest["paths"]})
    check_film_tables(tables, widths, manifest["film"]["sizes"])
    report: Dict[str, Any] = {"bundle": str(bundle), "files": len(manifest_files(manifest)), "backend": backend, "checks": []}
    report["engines"] = _engine_staleness(manifest)
    if backend == "none":
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
    entries = {e["id"]: dict(e, kind="path") for e in manifest["paths"]}
    entries.update({e["id"]: dict(e, kind="baked") for e in manifest.get("baked", []) or []})
    failures = []
    for item in ref_info["entries"]:
        entry = entries.get(item["id"])
        if entry is None:
            raise BundleError(f"{bundle}: parity reference names unknown path {item['id']!r}")
        key = item["key"]
        if key not in ref:
            raise BundleError(f"{bundle}: parity reference lacks {key}")
        sess = _ort_session(bundle / entry["file"], threads)
        feed = {manifest["io"]["images"]["name"]: images}
        if entry["kind"] == "path":
            feed[manifest["io"]["film"]["name"]] = film_vector(tables, item["lam"], entry["width"])
        out = sess.run([manifest["io"]["logits"]["name"]], feed)[0]
        cmp = _compare(ref[key], out)
        ok = cmp["max_abs_diff"] <= tolerance * cmp["scale"] and cmp["top1_agreement"] == 1.0
        report["checks"].append({"id": item["id"], "lam": item["lam"], **cmp, "ok": ok})
        if not ok:
            failures.append(f"{item['id']} at λ={item['lam']:g}: max |Δ| {cmp['max_abs_diff']:.3g}, top-1 {cmp['top1_agreement']:.0%}")
    if failures:
        raise BundleError(f"{bundle}: outputs on onnxruntime differ from the exported reference: " + "; ".join(failures))
    return report


def _engine_staleness(manifest: Dict[str, Any]) -> List[Dict[str, Any]]:
    """For each engine: whether it fits this machine's TensorRT and GPU (only when TensorRT is
    importable; otherwise the engines are listed as not checked)."""
    engines = manifest.get("engines", []) or []
    if not engines:
        return []
    from oat_edge.export import tensorrt_builder as trb

    try:
        env = trb.probe_environment()
    except OatEdgeError as e:  # no TensorRT here (e.g. verifying a Jetson bundle on a laptop)
        return [{"path_id": e_["path_id"], "file": e_["file"], "ok": None, "reason": str(e)} for e_ in engines]
    onnx_sha = {x["id"]: x["sha256"] for x in list(manifest["paths"]) + list(manifest.get("baked", []) or [])}
    out = []
    for e in engines:
        check = trb.check_engine(e, env["tensorrt_version"], env["gpu"], onnx_sha.get(e["path_id"]))
        out.append({"path_id": e["path_id"], "file": e["file"], "ok": check.ok, "reason": check.reason})
    return out


def bundle_size(bundle_dir: PathLike) -> int:
    return sum(p.stat().st_size for p in Path(bundle_dir).rglob("*") if p.is_file())


def is_close_lambda(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), abs_tol=LAMBDA_TOL)


def iter_entries(manifest: Dict[str, Any]) -> Iterable[Dict[str, Any]]:
    """Every ONNX file entry: paths first, then baked paths (each with "kind")."""
    for e in manifest["paths"]:
        yield dict(e, kind="path")
    for e in manifest.get("baked", []) or []:
        yield dict(e, kind="baked")
