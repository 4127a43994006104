"""``export_bundle``: checkpoint -> bundle (docs/bundle.md).

Order of work: every argument and the checkpoint are checked first (one clear error, nothing
written); then the bundle is built in a temporary sibling folder — FiLM tables, one frozen,
simplified, op-checked ONNX file per (BN branch × width), baked hot modes, the parity gate on
each file, the verify reference, optional calibration and engines, the manifest — and renamed
into place only when all of it succeeded.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import oat_edge
from oat_edge.errors import BundleError, CheckpointError, ConfigError, OatEdgeError
from oat_edge.fileio import PathLike, atomic_directory, sha256_file
from oat_edge.lambda_code import S3_UNSEEN
from oat_edge.mode import check_lambda, fmt_width, match_width

from oat_edge.export import bundle as B
from oat_edge.export.film_tables import (
    build_film_tables, default_lambda_grid, film_vector, merge_grid, save_film_tables, write_npz,
)
from oat_edge.export.tensorrt_builder import parse_batch_profile

EXPORTABLE_METHODS = ("oat", "oats")
OPSET_RANGE = (14, 24)
TENSORRT_MODES = ("auto", "on", "off")


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BundleError(f"output {out} exists and is not a folder")
    if out.exists() and not force:
        raise BundleError(f"output folder {out} already exists; pass --force (force=True) to replace it")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise BundleError(f"cannot write the bundle next to {out}: {e.strerror or e}") from None


def _versions() -> Dict[str, Optional[str]]:
    import importlib.metadata as md

    out = {"oat_edge": oat_edge.__version__}
    for dist, key in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxsim", "onnxsim"),
                      ("onnxscript", "onnxscript"), ("numpy", "numpy")):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = None
    return out


def _plain(obj):
    """JSON-safe copy of checkpoint metadata (tuples -> lists, tensors refused)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _input_shape(payload: Dict[str, Any]) -> List[int]:
    shape = (payload.get("dataset") or {}).get("input_shape")
    if not shape:
        try:
            from oat_edge.training.datasets import dataset_info

            shape = dataset_info(payload["dataset"]["name"])["input_shape"]
        except (ImportError, KeyError, TypeError, OatEdgeError):
            shape = None
    if not shape or len(shape) != 3:
        raise CheckpointError("checkpoint does not record the input shape (dataset.input_shape [C, H, W])")
    return [int(x) for x in shape]


def _load(checkpoint: PathLike):
    from oat_edge.checkpoint import build_model, load_checkpoint
    from oat_edge.export.freeze import check_exportable

    payload = load_checkpoint(checkpoint)
    method = payload["method"]
    if method not in EXPORTABLE_METHODS:
        raise CheckpointError(
            f"{checkpoint} was trained with {method!r}, which has no λ knob; export makes bundles of "
            f"OAT/OATS models (train with --method oats)"
        )
    model = build_model(payload)
    check_exportable(model)
    return model, payload


def export_bundle(
    checkpoint: PathLike,
    out_dir: PathLike,
    widths: Optional[Sequence[float]] = None,
    lambda_grid: Optional[Sequence[float]] = None,
    opset: int = 17,
    batch=(1, 8, 64),
    calibrate: bool = False,
    bake: Sequence[float] = (),
    tensorrt: str = "auto",
    force: bool = False,
    progress: bool = True,
    *,
    parity_images: int = 64,
    calib_lambdas: Optional[Sequence[float]] = None,
    calib_attacks: Optional[Sequence[str]] = None,
    calib_max_images: Optional[int] = None,
    data_dir: Optional[PathLike] = None,
    engine_precision: str = "fp16",
) -> Path:
    """Export an OAT/OATS checkpoint to a bundle folder; returns its path. See the module
    docstring and docs/bundle.md. Raises an OatEdgeError subclass (nothing written) for bad
    arguments, a foreign/corrupt checkpoint, an untrained width, an unwritable output, an op
    TensorRT cannot parse, or a failed parity gate."""
    t_start = time.perf_counter()
    # --- arguments: all checked before any work ---
    if tensorrt not in TENSORRT_MODES:
        raise ConfigError(f"tensorrt must be one of {TENSORRT_MODES}, got {tensorrt!r}")
    try:
        opset = int(opset)
    except (TypeError, ValueError):
        raise ConfigError(f"opset must be an integer, got {opset!r}") from None
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ConfigError(f"opset must be in {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (TensorRT 10 parses 9..20+), got {opset}")
    batch_min, batch_opt, batch_max = parse_batch_profile(batch)
    bake = list(bake if bake is not None else [])
    bake_lams = merge_grid([check_lambda(x) for x in bake]) if bake else []
    if int(parity_images) < 1:
        raise ConfigError(f"parity_images must be ≥ 1, got {parity_images}")
    if tensorrt == "on":
        from oat_edge.export.tensorrt_builder import import_tensorrt

        import_tensorrt()  # ConfigError now, not after minutes of export
    out = Path(out_dir)
    _check_out_dir(out, force)

    model, payload = _load(checkpoint)
    all_widths = list(model.widths)
    widths = all_widths if widths is None or len(widths) == 0 else list(widths)
    widths = sorted({match_width(w, all_widths) for w in widths})
    base_grid = list(lambda_grid) if lambda_grid is not None and len(lambda_grid) else default_lambda_grid(model.train_lambdas)
    grid = merge_grid(base_grid + list(model.train_lambdas))
    input_shape = _input_shape(payload)
    if calibrate:
        try:
            from oat_edge.training.attacks import DEFAULT_ENSEMBLE
            from oat_edge.training.datasets import dataset_info, load_dataset
            from oat_edge.training.evaluate import evaluate_model, resolve_attacks
        except ImportError:
            raise ConfigError("--calibrate needs the training stage (oat_edge.training) installed") from None
        # Held-out data: the validation split where the dataset has one, else the test split
        # (never the images the model was trained on).
        ds_name = payload["dataset"]["name"]
        calib_split = "val" if "val" in dataset_info(ds_name)["splits"] else "test"
        calib_set = load_dataset(ds_name, calib_split, data_dir)  # ConfigError if files are missing
        calib_lams = merge_grid(calib_lambdas) if calib_lambdas else merge_grid(list(model.train_lambdas) + list(S3_UNSEEN))
        attack_objs = resolve_attacks(list(DEFAULT_ENSEMBLE if calib_attacks is None else calib_attacks), calib_set.name)
    bns = ["c", "a"] if 0.0 in model.train_lambdas else ["a"]

    from oat_edge.export import parity as P
    from oat_edge.export.freeze import folded_bn_count, freeze_path
    from oat_edge.export.onnx_export import (
        canonicalize, convert_opset, export_onnx, global_pooling, op_types, simplify, to_bytes,
    )
    from oat_edge.export.opcheck import check_ops, describe_table
    from oat_edge.flops import count_path

    tables = build_film_tables(model, widths, grid)
    images, image_source = P.load_parity_images(payload.get("dataset"), input_shape, int(parity_images), data_dir)
    notes: List[str] = []
    timings = {"freeze_export": 0.0, "parity": 0.0, "calibration": 0.0, "engines": 0.0}
    reference_logits: Dict = {}  # PyTorch logits per (λ, width), shared by a path and its baked modes

    def make_onnx(gm, film_size, graph_name, dest: Path) -> Dict[str, Any]:
        t0 = time.perf_counter()
        proto = export_onnx(gm, input_shape, film_size, opset)
        proto, why = simplify(proto)
        proto = convert_opset(global_pooling(proto), opset)
        if why:
            warnings.warn(f"{graph_name}: kept the unsimplified graph ({why})", RuntimeWarning, stacklevel=3)
            notes.append(f"{graph_name}: not simplified ({why})")
        try:
            canonicalize(proto, graph_name)
        except Exception as e:  # onnx.checker raises its own ValidationError
            raise BundleError(f"{graph_name}: exported ONNX graph fails onnx.checker: {str(e)[:300]}") from None
        op_warnings = check_ops(proto, where=graph_name)
        notes.extend(w for w in op_warnings if w not in notes)
        data = to_bytes(proto)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        timings["freeze_export"] += time.perf_counter() - t0
        return {"simplified": why is None, "ops": op_types(proto), "bytes": len(data)}

    def gate(path_file: Path, width: float, lams, film_for, label: str, failures: Dict[str, List[str]]) -> Dict:
        t0 = time.perf_counter()
        rec = P.check_file(model, path_file, width, lams, images, film_for, reference_cache=reference_logits)
        timings["parity"] += time.perf_counter() - t0
        failures[label] = rec.pop("failures")
        return rec

    jobs = [(bn, w) for w in widths for bn in bns] + [(lam, w) for lam in bake_lams for w in widths]
    try:
        with atomic_directory(out, overwrite=force) as tmp:
            save_film_tables(tmp / B.FILM_FILE, tables)
            path_entries, baked_entries, failures = [], [], {}
            reference: Dict[str, np.ndarray] = {"images": images[: P.N_REFERENCE_IMAGES]}
            ref_entries = []
            per_file_seconds: Dict[str, float] = {}
            for job in _progress(jobs, progress, "exporting paths"):
                t_job = time.perf_counter()
                if job[0] in ("c", "a"):
                    bn, w = job
                    pid = B.path_id(bn, w)
                    rel = f"paths/{pid}.onnx"
                    gm = freeze_path(model, w, bn)
                    info = make_onnx(gm, model.film_size(w), pid, tmp / rel)
                    rep_lam = 0.0 if bn == "c" else 1.0
                    fl = count_path(model, input_shape, w, rep_lam)

                    def film_for(lam, _w=w):
                        return film_vector(tables, lam, _w)

                    par = gate(tmp / rel, w, P.parity_lambdas(bn, model.train_lambdas, grid), film_for, pid, failures)
                    path_entries.append({
                        "id": pid, "bn": bn, "width": float(w), "file": rel, "sha256": sha256_file(tmp / rel),
                        "bytes": info["bytes"], "film_size": int(model.film_size(w)),
                        "flops": fl["conv_linear_flops"], "film_generator_flops": fl["film_generator_flops"],
                        "params": fl["params"], "simplified": info["simplified"], "ops": info["ops"],
                        "folded": folded_bn_count(gm), "parity": par,
                    })
                    for lam in P.reference_lambdas(bn, model.train_lambdas):
                        key = B.parity_key(pid, lam)
                        reference[key] = P.torch_logits(model, reference["images"], lam, w)
                        ref_entries.append({"id": pid, "lam": float(lam), "key": key})
                    per_file_seconds[pid] = round(time.perf_counter() - t_job, 3)
                else:
                    lam, w = job
                    bid = B.baked_id(lam, w)
                    rel = f"baked/{bid}.onnx"
                    fvec = film_vector(tables, lam, w)
                    gm = freeze_path(model, w, "c" if lam == 0.0 else "a", film_vector=fvec)
                    info = make_onnx(gm, None, bid, tmp / rel)
                    fl = count_path(model, input_shape, w, lam)
                    par = gate(tmp / rel, w, [lam], None, bid, failures)
                    baked_entries.append({
                        "id": bid, "lam": float(lam), "bn": "c" if lam == 0.0 else "a", "width": float(w), "file": rel,
                        "sha256": sha256_file(tmp / rel), "bytes": info["bytes"], "flops": fl["conv_linear_flops"],
                        "params": fl["params"] - _generator_params(model, w), "simplified": info["simplified"],
                        "ops": info["ops"], "folded": folded_bn_count(gm), "parity": par,
                    })
                    key = B.parity_key(bid, lam)
                    reference[key] = P.torch_logits(model, reference["images"], lam, w)
                    ref_entries.append({"id": bid, "lam": float(lam), "key": key})
                    per_file_seconds[bid] = round(time.perf_counter() - t_job, 3)
            if any(failures.values()):
                raise P.parity_failure(failures)
            write_npz(tmp / B.PARITY_FILE, reference)

            calibration = None
            if calibrate:
                t0 = time.perf_counter()
                records = evaluate_model(model, calib_set, lambdas=calib_lams, widths=widths, attacks=attack_objs,
                                         max_images=calib_max_images, progress=progress)
                model.eval()
                timings["calibration"] = time.perf_counter() - t0
                n = len(calib_set) if calib_max_images is None else min(len(calib_set), int(calib_max_images))
                calibration = {
                    "dataset": calib_set.name, "split": calib_split, "n_images": int(n),
                    "attacks": {a.name: {k: v for k, v in a.describe().items() if k != "name"} for a in attack_objs},
                    # The runtime's robust metric: per image, correct clean and under every attack;
                    # each record has n and the binomial standard error "se" of that figure.
                    "robust_metric": "worst_case",
                    "records": [_plain(r) for r in records],
                }

            manifest = _manifest(
                model, payload, checkpoint, widths, input_shape, grid, tables, opset, (batch_min, batch_opt, batch_max),
                path_entries, baked_entries, ref_entries, images, image_source, calibration, notes, timings,
                describe_table(),
            )
            manifest["film"]["sha256"] = sha256_file(tmp / B.FILM_FILE)
            manifest["parity_reference"]["sha256"] = sha256_file(tmp / B.PARITY_FILE)
            manifest["export"]["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
            manifest["export"]["seconds_per_file"] = per_file_seconds
            from oat_edge.fileio import atomic_write_json

            atomic_write_json(tmp / B.MANIFEST, manifest)
            _maybe_engines(tmp, tensorrt, engine_precision, (batch_min, batch_opt, batch_max), progress, timings)
            _readable_by_all(tmp)
    except OSError as e:
        # The output location went away or filled up mid-export; atomic_directory cleaned up.
        raise BundleError(f"could not write bundle {out}: {e}") from None
    return out


def _readable_by_all(root: Path) -> None:
    """Temp folders and atomic files are created owner-only (mkdtemp/mkstemp); a bundle is
    meant to be copied and shared, so give it ordinary permissions (umask respected)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _generator_params(model, width) -> int:
    i = model.widths.index(float(width))
    return sum(t.numel() for s in model.film_sites() for t in s.generator_weights(i))


def _maybe_engines(bundle_dir: Path, mode: str, precision: str, batch, progress: bool, timings) -> None:
    if mode == "off":
        return
    from oat_edge.export import tensorrt_builder as trb

    if mode == "auto" and not trb.tensorrt_available():
        return
    t0 = time.perf_counter()
    try:
        trb.build_engines(bundle_dir, precision=precision, batch=batch, progress=progress)
    except OatEdgeError as e:
        if mode == "on":
            raise
        warnings.warn(f"TensorRT is installed but engines were not built ({e}); run `oat-edge build-engines` on the target", RuntimeWarning)
    timings["engines"] = time.perf_counter() - t0


def _manifest(model, payload, checkpoint, widths, input_shape, grid, tables, opset, batch, path_entries, baked_entries,
              ref_entries, images, image_source, calibration, notes, timings, op_table) -> Dict[str, Any]:
    num_classes = int(model.classifier.out_features)
    sizes = {fmt_width(w): int(model.film_size(w)) for w in widths}
    return {
        "schema": B.SCHEMA,
        "schema_version": B.SCHEMA_VERSION,
        "tools": {**_versions(), "opset": int(opset), "exporter": "torch.export + torch.onnx (dynamo)"},
        "source": {
            "checkpoint_sha256": sha256_file(checkpoint), "method": payload["method"], "epoch": payload.get("epoch"),
            "arch": payload["arch"], "arch_kwargs": _plain(payload["arch_kwargs"]),
        },
        "model": {
            "arch": payload["arch"], "num_classes": num_classes, "input_shape": list(input_shape),
            "value_range": [0.0, 1.0], "widths": [float(w) for w in widths],
            "trained_widths": [float(w) for w in model.widths], "train_lambdas": [float(x) for x in model.train_lambdas],
            "dataset": _plain({k: v for k, v in (payload.get("dataset") or {}).items()}),
            "film_sites": len(model.film_sites()), "code_dim": int(model.code_dim), "dual_bn": bool(model.dual_bn),
        },
        "io": {
            "images": {"name": "images", "dtype": "float32", "shape": ["batch", *input_shape]},
            "film": {"name": "film", "dtype": "float32", "shape": ["film_size"]},
            "logits": {"name": "logits", "dtype": "float32", "shape": ["batch", num_classes]},
        },
        "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "paths": path_entries,
        "baked": baked_entries,
        "baked_modes": [{"lam": e["lam"], "width": e["width"]} for e in baked_entries],
        "film": {
            "file": B.FILM_FILE, "sha256": None, "code_dim": int(model.code_dim),
            "negative_slope": float(tables["negative_slope"]), "grid": [float(g) for g in grid], "sizes": sizes,
        },
        "parity_reference": {
            "file": B.PARITY_FILE, "sha256": None, "n_images": int(min(len(images), 8)), "tolerance": B.VERIFY_TOL,
            "entries": ref_entries,
        },
        "parity_inputs": {"source": image_source, "n_images": int(len(images))},
        "opcheck": {**op_table, "passed": True},
        "engines": [],
        "calibration": calibration,
        "notes": notes,
        "export": {
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "seconds": {k: round(v, 3) for k, v in timings.items()},
        },
    }


def _progress(items, enabled: bool, label: str):
    if not enabled:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(label, total=len(items))
        for x in items:
            yield x
            bar.advance(task)
