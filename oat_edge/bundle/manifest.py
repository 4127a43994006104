"""The bundle manifest (docs/bundle.md): reading with validation, writing, signing.

torch-free: the export stage writes bundles with ``new_manifest`` / ``write_manifest`` and
signs them with ``sign_bundle``; the runtime, ``inspect`` and ``verify`` read them with
``load_manifest`` (the validated dict, for code that edits it) or ``read_manifest`` (the typed
``Manifest``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from oat_edge.bundle.film import check_film_file, load_film_tables
from oat_edge.bundle.latency import read_latency_profile
from oat_edge.bundle.names import FILM_FILE, MANIFEST, PARITY_FILE, SCHEMA, SCHEMA_VERSION, SIGNATURE_FILE
from oat_edge.bundle.safe_files import inside, onnx_external_data, read_manifest_bytes, read_once
from oat_edge.bundle.schema import parse_manifest
from oat_edge.bundle.signature import check_signature, latency_files, load_private_key, sign_manifest
from oat_edge.bundle.typed import Manifest
from oat_edge.errors import BundleError, ConfigError
from oat_edge.fileio import PathLike, atomic_write_json, sha256_file

# verify: max |Δlogit| allowed against the export-time PyTorch logits, relative to their scale
# (another CPU's kernels sum in another order; fp32 keeps that far below this).
VERIFY_TOL = 1e-4
# Images of the parity gate whose PyTorch logits are stored in parity.npz for `verify`.
N_REFERENCE_IMAGES = 8


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
    """The manifest of a bundle, as the validated dict; BundleError for a missing folder or
    manifest, a symlinked or escaping file, a signature that does not verify (with
    ``trusted_keys``: a missing one or one by another key too), a manifest that fails the schema
    (oat_edge.bundle.schema), a missing file, an ONNX file whose external data the manifest does
    not name, or (with ``verify_hashes``) a file whose sha256 differs from the recorded one.
    ``check_engines=False`` leaves engine files to the caller (``build-engines`` replaces
    damaged ones).

    With ``verify_hashes`` each file is read once (O_NOFOLLOW) and those bytes are hashed;
    ``keep`` (a dict) receives them by bundle-relative name (engines excepted), so the caller
    builds its sessions and tables from exactly the bytes that were verified, not from a path
    that may have been swapped since."""
    bundle = Path(bundle_dir)
    data = read_manifest_bytes(bundle, MANIFEST)
    # Before the manifest's content is trusted at all; min_signed_at refuses an older signed bundle.
    signer = check_signature(bundle, data, trusted_keys, min_signed_at=min_signed_at)
    if trusted_keys:
        verify_hashes = True  # a signature over unchecked hashes would vouch for nothing
        if keep is not None:
            _keep_signed_latency(bundle, signer["latency"], keep)
    manifest = parse_manifest(data, str(bundle / MANIFEST))
    _check_listed_files(bundle, manifest, verify_hashes, check_engines, keep)
    _check_external_data(bundle, manifest, keep)
    return manifest


def read_manifest(bundle_dir: PathLike, **options) -> Manifest:
    """The manifest of a bundle as the typed ``Manifest``; checks and options as
    ``load_manifest``."""
    return Manifest.from_dict(load_manifest(bundle_dir, **options))


def _keep_signed_latency(bundle: Path, signed: Dict[str, str], keep: Dict[str, bytes]) -> None:
    """The latency profiles the signature covers, as signed (others are not used)."""
    for name, sha in signed.items():
        path = inside(bundle, name, "latency profile")
        raw = read_once(path, f"{bundle}: latency profile {name}") if path.is_file() else None
        if raw is not None and hashlib.sha256(raw).hexdigest() == sha:
            keep[name] = raw


def _check_listed_files(bundle: Path, manifest: Dict[str, Any], verify_hashes: bool, check_engines: bool,
                        keep: Optional[Dict[str, bytes]]) -> None:
    """Every file the manifest names is inside the bundle, present and (``verify_hashes``)
    matches its sha256."""
    for item in manifest_files(manifest):
        engine = item["what"].startswith("engine")
        if engine and not check_engines:
            continue
        target = inside(bundle, item["file"], item["what"])
        if not target.is_file():
            raise BundleError(f"{bundle}: {item['what']} file {item['file']} is missing; the bundle is incomplete")
        if not verify_hashes:
            continue
        data = read_once(target, f"{bundle}: {item['what']} file {item['file']}")
        if keep is not None and not engine:
            keep[item["file"]] = data
        if not isinstance(item["sha256"], str) or hashlib.sha256(data).hexdigest() != item["sha256"]:
            hint = (f"rebuild engines with `oat-edge build-engines {bundle} --force`" if engine
                    else "re-export the bundle")
            raise BundleError(f"{bundle}: {item['what']} file {item['file']} does not match its sha256 in the "
                              f"manifest (tampered with or truncated); {hint}")


def _check_external_data(bundle: Path, manifest: Dict[str, Any], keep: Optional[Dict[str, bytes]]) -> None:
    """Every file an ONNX graph pulls in must be named (and so hashed and signed) by the manifest."""
    for e in iter_entries(manifest):
        onnx_file = inside(bundle, e["file"], f"{e['kind']} {e['id']}")
        folder = PurePosixPath(e["file"]).parent
        named = {x["file"] for x in e.get("external_data") or []}  # bundle-relative, like every file
        source = keep[e["file"]] if keep is not None and e["file"] in keep else onnx_file
        for location in onnx_external_data(source, f"{bundle}: {e['kind']} {e['id']} ({e['file']})"):
            rel = str(folder / location) if str(folder) != "." else location
            inside(bundle, rel, f"external data of {e['kind']} {e['id']}")
            if rel not in named:
                raise BundleError(f"{bundle}: {e['kind']} {e['id']} ({e['file']}) reads external data {location!r} that "
                                  "the manifest does not name or hash; the bundle was altered, re-export it")


def iter_entries(manifest: Dict[str, Any]) -> Iterable[Dict[str, Any]]:
    """Every ONNX file entry: paths first, then baked paths (each with "kind")."""
    for e in manifest["paths"]:
        yield dict(e, kind="path")
    for e in manifest.get("baked", []) or []:
        yield dict(e, kind="baked")


def onnx_sha256(manifest: Dict[str, Any]) -> Dict[str, str]:
    """{entry id: sha256} of every ONNX file (what an engine must have been built from)."""
    return {e["id"]: e["sha256"] for e in iter_entries(manifest)}


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


def sign_bundle(bundle: Union[str, os.PathLike], key: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Check the bundle (hashes, schema, files inside it, FiLM tables, latency profiles), then
    write BUNDLE/manifest.sig."""
    private = load_private_key(key)
    verified: Dict[str, bytes] = {}
    m = read_manifest(bundle, verify_hashes=True, keep=verified)  # never sign a bundle that does not check out
    name = str(Path(bundle) / m.film.file)  # nor one whose FiLM tables a runtime refuses
    check_film_file(load_film_tables(verified.get(m.film.file, name), name), name, list(m.model.widths), m.film.sizes,
                    m.film.negative_slope)
    data = read_manifest_bytes(bundle, MANIFEST)
    latency = latency_files(bundle)
    for name, raw in latency.items():  # well-formed, as the runtime reads them
        read_latency_profile(bundle, Path(name).stem, data=raw)
    sig = sign_manifest(data, private, {name: hashlib.sha256(raw).hexdigest() for name, raw in latency.items()})
    atomic_write_json(Path(bundle) / SIGNATURE_FILE, sig)
    os.chmod(Path(bundle) / SIGNATURE_FILE, 0o644)
    return sig
