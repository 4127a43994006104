"""The bundle manifest (docs/bundle.md): names, ids, reading with validation, writing.

numpy-free and torch-free: the export stage writes bundles with ``new_manifest`` /
``write_manifest``; the runtime, ``inspect`` and ``verify`` read them with ``load_manifest``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from oat_edge.errors import BundleError, ConfigError
from oat_edge.fileio import PathLike, atomic_write_json, sha256_file
from oat_edge.mode import fmt_width, same_lambda

SCHEMA = "oat-edge/bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FILM_FILE = "film.npz"
PARITY_FILE = "parity.npz"
LATENCY_DIR = "latency"
REQUIRED = ("schema", "schema_version", "tools", "model", "io", "batch", "paths", "film")
# verify: max |Δlogit| allowed against the export-time PyTorch logits, relative to their scale
# (another CPU's kernels sum in another order; fp32 keeps that far below this).
VERIFY_TOL = 1e-4
# Images of the parity gate whose PyTorch logits are stored in parity.npz for `verify`.
N_REFERENCE_IMAGES = 8


def path_id(bn: str, width: float, precision: str = "fp32") -> str:
    from oat_edge.precision import suffix

    return f"{bn}_w{fmt_width(width)}{suffix(precision)}"


def baked_id(lam: float, width: float, precision: str = "fp32") -> str:
    from oat_edge.precision import suffix

    return f"lam{float(lam):g}_w{fmt_width(width)}{suffix(precision)}"


def parity_key(entry_id: str, lam: float) -> str:
    return f"logits__{entry_id}__lam{float(lam):g}"


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


def _safe_relpath(bundle: Path, rel: Any, what: str) -> Path:
    """A manifest names files relative to the bundle; refuse anything that escapes it (``..``,
    absolute names, symlinks, paths that resolve outside)."""
    from oat_edge.safe_files import inside

    return inside(bundle, rel, what)


def manifest_files(manifest: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every file the manifest names, as {"what", "file", "sha256"}."""
    out = []
    for kind, entries in (("path", manifest.get("paths", [])), ("baked path", manifest.get("baked", []) or [])):
        for e in entries:
            out.append({"what": f"{kind} {e.get('id')}", "file": e.get("file"), "sha256": e.get("sha256")})
            for x in e.get("external_data") or []:  # ONNX external data: hashed like any other file
                out.append({"what": f"external data of {kind} {e.get('id')}", "file": x.get("file"),
                            "sha256": x.get("sha256")})
    film = manifest.get("film") or {}
    out.append({"what": "FiLM tables", "file": film.get("file"), "sha256": film.get("sha256")})
    ref = manifest.get("parity_reference")
    if ref:
        out.append({"what": "parity reference", "file": ref.get("file"), "sha256": ref.get("sha256")})
    for e in manifest.get("engines", []) or []:
        out.append({"what": f"engine {e.get('path_id')} ({e.get('precision')})", "file": e.get("file"), "sha256": e.get("sha256")})
    return out


def load_manifest(bundle_dir: PathLike, verify_hashes: bool = True, check_engines: bool = True,
                  trusted_keys=None, keep: Optional[Dict[str, bytes]] = None, min_signed_at=None) -> Dict[str, Any]:
    """The manifest of a bundle; BundleError for a missing folder or manifest, a symlinked or
    escaping file, a signature that does not verify (with ``trusted_keys``: a missing one or one
    by another key too), a manifest that fails the typed schema (oat_edge.manifest_schema), a
    missing file, an ONNX file whose external data the manifest does not name, or (with
    ``verify_hashes``) a file whose sha256 differs from the recorded one. ``check_engines=False``
    leaves engine files to the caller (``build-engines`` replaces damaged ones).

    With ``verify_hashes`` each file is read once (O_NOFOLLOW) and those bytes are hashed;
    ``keep`` (a dict) receives them by bundle-relative name (engines excepted), so the caller
    builds its sessions and tables from exactly the bytes that were verified, not from a path
    that may have been swapped since."""
    from oat_edge.manifest_schema import parse_manifest
    from oat_edge.safe_files import onnx_external_data, read_manifest_bytes, read_once
    from oat_edge.signing import check_signature

    bundle = Path(bundle_dir)
    data = read_manifest_bytes(bundle, MANIFEST)
    # Before the manifest's content is trusted at all; min_signed_at refuses an older signed bundle.
    signer = check_signature(bundle, data, trusted_keys, min_signed_at=min_signed_at)
    if trusted_keys:
        verify_hashes = True  # a signature over unchecked hashes would vouch for nothing
        if keep is not None:  # the latency profiles the signature covers, as signed (others are not used)
            for name, sha in signer["latency"].items():
                path = _safe_relpath(bundle, name, "latency profile")
                raw = read_once(path, f"{bundle}: latency profile {name}") if path.is_file() else None
                if raw is not None and hashlib.sha256(raw).hexdigest() == sha:
                    keep[name] = raw
    manifest = parse_manifest(data, str(bundle / MANIFEST))
    for item in manifest_files(manifest):
        if not check_engines and item["what"].startswith("engine"):
            continue
        target = _safe_relpath(bundle, item["file"], item["what"])
        if not target.is_file():
            raise BundleError(f"{bundle}: {item['what']} file {item['file']} is missing; the bundle is incomplete")
        if verify_hashes:
            data = read_once(target, f"{bundle}: {item['what']} file {item['file']}")
            if keep is not None and not item["what"].startswith("engine"):
                keep[item["file"]] = data
            if not isinstance(item["sha256"], str) or hashlib.sha256(data).hexdigest() != item["sha256"]:
                hint = (
                    "rebuild engines with `oat-edge build-engines " + str(bundle) + " --force`"
                    if item["what"].startswith("engine") else "re-export the bundle"
                )
                raise BundleError(
                    f"{bundle}: {item['what']} file {item['file']} does not match its sha256 in the manifest "
                    f"(tampered with or truncated); {hint}"
                )
    # Every file an ONNX graph pulls in must be named (and so hashed and signed) by the manifest.
    for e in iter_entries(manifest):
        onnx_file = _safe_relpath(bundle, e["file"], f"{e['kind']} {e['id']}")
        folder = PurePosixPath(e["file"]).parent
        named = {x["file"] for x in e.get("external_data") or []}  # bundle-relative, like every file
        source = keep[e["file"]] if keep is not None and e["file"] in keep else onnx_file
        for location in onnx_external_data(source, f"{bundle}: {e['kind']} {e['id']} ({e['file']})"):
            rel = str(folder / location) if str(folder) != "." else location
            _safe_relpath(bundle, rel, f"external data of {e['kind']} {e['id']}")
            if rel not in named:
                raise BundleError(f"{bundle}: {e['kind']} {e['id']} ({e['file']}) reads external data {location!r} that "
                                  "the manifest does not name or hash; the bundle was altered, re-export it")
    return manifest


def iter_entries(manifest: Dict[str, Any]) -> Iterable[Dict[str, Any]]:
    """Every ONNX file entry: paths first, then baked paths (each with "kind")."""
    for e in manifest["paths"]:
        yield dict(e, kind="path")
    for e in manifest.get("baked", []) or []:
        yield dict(e, kind="baked")


def onnx_sha256(manifest: Dict[str, Any]) -> Dict[str, str]:
    """{entry id: sha256} of every ONNX file (what an engine must have been built from)."""
    return {e["id"]: e["sha256"] for e in iter_entries(manifest)}


def bundle_size(bundle_dir: PathLike) -> int:
    return sum(p.stat().st_size for p in Path(bundle_dir).rglob("*") if p.is_file())


def is_close_lambda(a: float, b: float) -> bool:
    return same_lambda(a, b)


def new_manifest(*, tools: Dict[str, Any], source: Dict[str, Any], model: Dict[str, Any], batch: Sequence[int],
                 paths: List[Dict[str, Any]], baked: List[Dict[str, Any]], film: Dict[str, Any],
                 parity_reference: Dict[str, Any], parity_inputs: Dict[str, Any], opcheck: Dict[str, Any],
                 calibration: Optional[Dict[str, Any]], notes: List[str], export: Dict[str, Any],
                 preprocessing: Optional[Dict[str, Any]] = None,
                 precisions: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A manifest in the schema's key order; ``io`` and ``baked_modes`` follow from ``model``
    and ``baked``. ``model`` needs "input_shape" and "num_classes"."""
    input_shape, num_classes = list(model["input_shape"]), int(model["num_classes"])
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "tools": tools,
        "source": source,
        "model": model,
        "io": {
            "images": {"name": "images", "dtype": "float32", "shape": ["batch", *input_shape]},
            "film": {"name": "film", "dtype": "float32", "shape": ["film_size"]},
            "logits": {"name": "logits", "dtype": "float32", "shape": ["batch", num_classes]},
        },
        "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "paths": paths,
        "baked": baked,
        "baked_modes": [{"lam": e["lam"], "width": e["width"], **({"precision": e["precision"]} if "precision" in e else {})}
                        for e in baked],
        "film": {"file": FILM_FILE, "sha256": None, **film},
        "parity_reference": {"file": PARITY_FILE, "sha256": None, **parity_reference},
        "parity_inputs": parity_inputs,
        "opcheck": opcheck,
        "engines": [],
        "calibration": calibration,
        "notes": notes,
        "export": export,
        # The raw → input transform (docs/bundle.md "Preprocessing"); absent in older bundles.
        "preprocessing": preprocessing,
        # per precision beyond fp32: how its files were made and the parity bar they passed
        **({"precisions": precisions} if precisions else {}),
    }


def write_manifest(bundle_dir: PathLike, manifest: Dict[str, Any]) -> Path:
    """Fill in the sha256 of the FiLM tables and the parity reference, then write
    ``manifest.json`` atomically."""
    bundle = Path(bundle_dir)
    for section in ("film", "parity_reference"):
        entry = manifest.get(section)
        if entry and entry.get("sha256") is None:
            entry["sha256"] = sha256_file(bundle / entry["file"])
    atomic_write_json(bundle / MANIFEST, manifest)
    return bundle / MANIFEST
