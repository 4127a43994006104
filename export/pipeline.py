"""``export_bundle``: checkpoint -> bundle (docs/bundle.md).

Order of work: every argument and the checkpoint are checked first (one clear error, nothing
written); then the bundle is built in a temporary sibling folder — FiLM tables, the "graphs"
export targets (``targets/``: the ONNX paths and baked modes, each through the parity gate),
the verify reference, optional calibration, the manifest, then the "device" targets (TensorRT
engines) — and renamed into place only when all of it succeeded.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import oat_edge
from oat_edge.bundle.film import default_lambda_grid, merge_grid, save_film_tables, write_npz
from oat_edge.bundle.manifest import N_REFERENCE_IMAGES, VERIFY_TOL, new_manifest, parse_batch_profile, write_manifest
from oat_edge.bundle.names import FILM_FILE, PARITY_FILE, SCHEMA
from oat_edge.errors import BundleError, CheckpointError, ConfigError, DependencyError, OatEdgeError
from oat_edge.export import precision as export_precision
from oat_edge.export.parity import load_parity_images
from oat_edge.fileio import PathLike, atomic_directory, clean_stale, describe_os_error, plain, recover_swap, sha256_file
from oat_edge.lambda_code import S3_UNSEEN
from oat_edge.mode import check_lambda, fmt_width, match_width

EXPORTABLE_METHODS = ("oat", "oats")
OPSET_RANGE = (14, 24)
TENSORRT_MODES = ("auto", "on", "off")


@dataclass
class ExportJob:
    """Everything one export needs and accumulates; what the export targets read and fill."""

    opset: int
    batch: Tuple[int, int, int]
    tensorrt: str
    engine_precision: str
    progress: bool
    bake_lams: List[float]
    precisions: List[str] = field(default_factory=lambda: ["fp32"])  # fp32 first (export.precision)
    model: Any = None
    payload: Dict[str, Any] = field(default_factory=dict)
    widths: List[float] = field(default_factory=list)
    grid: List[float] = field(default_factory=list)
    bns: List[str] = field(default_factory=list)
    input_shape: List[int] = field(default_factory=list)
    tables: Dict[str, np.ndarray] = field(default_factory=dict)
    images: Optional[np.ndarray] = None
    image_source: str = ""
    quant_images: Optional[np.ndarray] = None  # int8 range calibration (held-out images)
    quant_source: str = ""
    int8_activations: str = "u8"  # "s8" | "u8", resolved from the option (export.precision)
    notes: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=lambda: {"freeze_export": 0.0, "parity": 0.0,
                                                                "calibration": 0.0, "engines": 0.0})
    failures: Dict[str, List[str]] = field(default_factory=dict)
    reference_logits: Dict = field(default_factory=dict)  # PyTorch logits per (λ, width): a path and its baked modes
    reference: Dict[str, np.ndarray] = field(default_factory=dict)  # parity.npz
    reference_entries: List[Dict[str, Any]] = field(default_factory=list)
    seconds_per_file: Dict[str, float] = field(default_factory=dict)


# What an oat-edge bundle folder holds at its top level (docs/bundle.md): --force replaces only such a folder.
BUNDLE_ENTRIES = frozenset({"manifest.json", "manifest.sig", "film.npz", "parity.npz", "paths", "baked", "engines",
                            "latency"})


def _check_replaceable(out: Path, checkpoint: Optional[Path]) -> None:
    """--force deletes ``out``: allow it only for an oat-edge bundle (its manifest says so) that
    holds nothing else and not the input checkpoint."""
    import json

    if checkpoint is not None:
        ckpt = Path(checkpoint).resolve()
        if ckpt == out.resolve() or out.resolve() in ckpt.parents:
            raise BundleError(f"output folder {out} holds the input checkpoint {checkpoint}; --force would delete it")
    manifest = out / "manifest.json"
    try:
        if manifest.is_symlink() or not manifest.is_file() or manifest.stat().st_size > 16 << 20:
            raise ValueError
        doc = json.loads(manifest.read_bytes())
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ValueError
    except (OSError, ValueError):
        raise BundleError(f"output folder {out} exists and is not an oat-edge bundle (no bundle manifest.json); "
                          "--force replaces only a bundle: choose another folder") from None
    others = sorted(p.name for p in out.iterdir() if p.name not in BUNDLE_ENTRIES)
    if others:
        raise BundleError(f"output folder {out} holds files that are not part of a bundle ({', '.join(others[:5])}); "
                          "--force would delete them: move them or choose another folder")


def _check_out_dir(out: Path, force: bool, checkpoint: Optional[Path] = None) -> None:
    recover_swap(out)  # a --force swap that a crash interrupted: put the old bundle back first
    if out.parent.is_dir():
        clean_stale(out.parent, out.name)  # temp folders of killed exports into this parent
    if out.is_symlink():
        raise BundleError(f"output {out} is a symlink; give the bundle folder itself")
    if out.exists() and not out.is_dir():
        raise BundleError(f"output {out} exists and is not a folder")
    if out.exists() and not force:
        raise BundleError(f"output folder {out} already exists; pass --force (force=True) to replace it")
    if out.exists():
        _check_replaceable(out, checkpoint)
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
    precisions: Sequence[str] = ("fp32",),
    quant_images: Optional[int] = None,
    int8_activations: str = "auto",
) -> Path:
    """Export an OAT/OATS checkpoint to a bundle folder; returns its path. See the module
    docstring and docs/bundle.md. Raises an OatEdgeError subclass (nothing written) for bad
    arguments, a foreign/corrupt checkpoint, an untrained width, an unwritable output, an op
    TensorRT cannot parse, or a failed parity gate."""
    from oat_edge.export.targets import load_targets

    t_start = time.perf_counter()
    job = _check_arguments(opset, batch, bake, tensorrt, parity_images, engine_precision, progress)
    n_quant = _check_precision_options(job, precisions, quant_images, int8_activations)
    targets = load_targets()
    for target in targets:  # all checked before any work
        target.check(job)
    # int8 format per target: S8S8 where TensorRT engines are built, U8S8 for onnxruntime on the CPU
    wants_tensorrt = any(t.name == "tensorrt" and t.wanted(job) for t in targets)
    job.int8_activations = export_precision.resolve_activations(int8_activations, wants_tensorrt)
    out = Path(out_dir)
    _check_out_dir(out, force, Path(checkpoint))

    job.model, job.payload = _load(checkpoint)
    _plan(job, widths, lambda_grid)
    calib = _plan_calibration(job, data_dir, calib_lambdas, calib_attacks, calib_max_images) if calibrate else None
    _gather_inputs(job, int(parity_images), n_quant, data_dir)
    try:
        with atomic_directory(out, overwrite=force) as tmp:
            _write_bundle(job, tmp, targets, checkpoint, calib, t_start)
    except OSError as e:
        # The output location went away or filled up mid-export; atomic_directory cleaned up.
        raise BundleError(f"could not write bundle {out}: {describe_os_error(e)}") from None
    return out


@dataclass
class _CalibrationPlan:
    """What ``--calibrate`` measures on: held-out images, λ values and the attack ensemble."""

    dataset: Any
    split: str
    lambdas: List[float]
    attacks: List[Any]
    max_images: Optional[int]


def _plan_calibration(job: ExportJob, data_dir, calib_lambdas, calib_attacks, max_images) -> _CalibrationPlan:
    """The calibration data, loaded before any work (ConfigError if its files are missing)."""
    try:
        from oat_edge.training.attacks import DEFAULT_ENSEMBLE
        from oat_edge.training.datasets import dataset_options, load_dataset, static_info
        from oat_edge.training.evaluate import resolve_attacks, trained_eps
    except ImportError:
        raise DependencyError("--calibrate needs the training stage (oat_edge.training) installed") from None
    model, payload = job.model, job.payload
    # Held-out data: the validation split where the dataset has one, else the test split
    # (never the images the model was trained on).
    ds_name = payload["dataset"]["name"]
    split = "val" if "val" in static_info(ds_name)["splits"] else "test"
    dataset = load_dataset(ds_name, split, data_dir, dataset_options(payload["dataset"]))
    lambdas = merge_grid(calib_lambdas) if calib_lambdas else merge_grid(list(model.train_lambdas) + list(S3_UNSEEN))
    attacks = resolve_attacks(list(DEFAULT_ENSEMBLE if calib_attacks is None else calib_attacks), dataset.name,
                              eps=trained_eps(payload))  # the threat model the model was trained for
    return _CalibrationPlan(dataset, split, lambdas, attacks, max_images)


def _gather_inputs(job: ExportJob, parity_images: int, n_quant: int, data_dir) -> None:
    """FiLM tables, the parity gate's images and the verify reference, int8 calibration images."""
    from oat_edge.export.film_tables import build_film_tables

    job.tables = build_film_tables(job.model, job.widths, job.grid)
    dataset = job.payload.get("dataset")
    job.images, job.image_source = load_parity_images(dataset, job.input_shape, parity_images, data_dir)
    job.reference = {"images": job.images[:N_REFERENCE_IMAGES]}
    if "int8" in job.precisions:
        job.quant_images, job.quant_source = export_precision.calibration_images(dataset, job.input_shape, n_quant,
                                                                                 data_dir)
        if job.quant_source.startswith("uniform"):
            job.notes.append(f"int8 ranges calibrated on {job.quant_source}")


def _write_bundle(job: ExportJob, tmp: Path, targets, checkpoint, calib: Optional[_CalibrationPlan],
                  t_start: float) -> None:
    """Every file of the bundle into the temporary folder ``tmp``."""
    from oat_edge.export.opcheck import describe_table

    save_film_tables(tmp / FILM_FILE, job.tables)
    entries: Dict[str, List[Dict[str, Any]]] = {"paths": [], "baked": []}
    for target in targets:
        if target.phase == "graphs" and target.wanted(job):
            for section, items in target.write(job, tmp).items():
                entries[section].extend(items)
    write_npz(tmp / PARITY_FILE, job.reference)
    calibration = _calibrate(job, tmp, entries, calib) if calib is not None else None
    manifest = _manifest(job, checkpoint, entries, calibration, describe_table())
    manifest["export"]["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    manifest["export"]["seconds_per_file"] = job.seconds_per_file
    write_manifest(tmp, manifest)
    for target in targets:
        if target.phase == "device" and target.wanted(job):
            target.write(job, tmp)
    _readable_by_all(tmp)


def _calibrate(job: ExportJob, tmp: Path, entries, calib: _CalibrationPlan) -> Dict[str, Any]:
    """SA and worst-case RA per (λ, width) (and per precision beyond fp32), the manifest's
    ``calibration`` section."""
    from oat_edge.training.evaluate import default_jobs, evaluate_model

    model, t0 = job.model, time.perf_counter()
    records = evaluate_model(model, calib.dataset, lambdas=calib.lambdas, widths=job.widths, attacks=calib.attacks,
                             max_images=calib.max_images, progress=job.progress, jobs=default_jobs())
    model.eval()
    if len(job.precisions) > 1:
        from oat_edge.export.quant_eval import evaluate_precisions
        from oat_edge.training.evaluate import resolve_modes

        records += evaluate_precisions(job, tmp, entries, calib.dataset,
                                       resolve_modes(model, calib.lambdas, job.widths), calib.attacks,
                                       calib.max_images, job.progress)
        model.eval()
    job.timings["calibration"] = time.perf_counter() - t0
    n = len(calib.dataset) if calib.max_images is None else min(len(calib.dataset), int(calib.max_images))
    calibration = {
        "dataset": calib.dataset.name, "split": calib.split, "n_images": int(n),
        "attacks": {a.name: {k: v for k, v in a.describe().items() if k != "name"} for a in calib.attacks},
        # The runtime's robust metric: per image, correct clean and under every attack;
        # each record has n and the binomial standard error "se" of that figure.
        "robust_metric": "worst_case",
        "records": [plain(r) for r in records],
    }
    if len(job.precisions) > 1:
        calibration["reduced_precision"] = (
            "records with a precision (fp16/int8) are scored on that file: ra.transfer = the fp32 "
            "model's adversarial images (whole ensemble), ra.whitebox_twin = the ensemble's gradient "
            "attacks through a torch twin of the file (straight-through rounding), ra.square_onnx = "
            "Square against the file itself; worst_case = per image over all three")
    return calibration


def _check_precision_options(job: ExportJob, precisions, quant_images, int8_activations) -> int:
    """Fill in the job's precisions and int8 activations; returns the number of int8
    calibration images."""
    from oat_edge.precision import parse_precisions

    job.precisions = parse_precisions(precisions)
    n_quant = export_precision.QUANT_IMAGES if quant_images is None else int(quant_images)
    if n_quant < 1:
        raise ConfigError(f"quant_images must be ≥ 1, got {quant_images}")
    if int8_activations not in export_precision.INT8_ACTIVATIONS:
        raise ConfigError(f"int8_activations must be one of {export_precision.INT8_ACTIVATIONS}, "
                          f"got {int8_activations!r}")
    return n_quant


def _check_arguments(opset, batch, bake, tensorrt, parity_images, engine_precision, progress) -> ExportJob:
    if tensorrt not in TENSORRT_MODES:
        raise ConfigError(f"tensorrt must be one of {TENSORRT_MODES}, got {tensorrt!r}")
    try:
        opset = int(opset)
    except (TypeError, ValueError):
        raise ConfigError(f"opset must be an integer, got {opset!r}") from None
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ConfigError(f"opset must be in {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (TensorRT 10 parses 9..20+), got {opset}")
    batch = parse_batch_profile(batch)
    bake = list(bake if bake is not None else [])
    bake_lams = merge_grid([check_lambda(x) for x in bake]) if bake else []
    if int(parity_images) < 1:
        raise ConfigError(f"parity_images must be ≥ 1, got {parity_images}")
    return ExportJob(opset=opset, batch=batch, tensorrt=tensorrt, engine_precision=engine_precision,
                     progress=progress, bake_lams=bake_lams)


def _plan(job: ExportJob, widths, lambda_grid) -> None:
    """Widths, FiLM grid, BN branches and input shape of the export."""
    model = job.model
    all_widths = list(model.widths)
    widths = all_widths if widths is None or len(widths) == 0 else list(widths)
    job.widths = sorted({match_width(w, all_widths) for w in widths})
    base_grid = list(lambda_grid) if lambda_grid is not None and len(lambda_grid) else default_lambda_grid(model.train_lambdas)
    job.grid = merge_grid(base_grid + list(model.train_lambdas))
    job.input_shape = _input_shape(job.payload)
    job.bns = ["c", "a"] if 0.0 in model.train_lambdas else ["a"]


def _readable_by_all(root: Path) -> None:
    """Temp folders and atomic files are created owner-only (mkdtemp/mkstemp); a bundle is
    meant to be copied and shared, so give it ordinary permissions (umask respected)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _film_section(job: ExportJob, model, widths) -> Dict[str, Any]:
    film = {"code_dim": int(model.code_dim), "negative_slope": float(job.tables["negative_slope"]),
            "grid": [float(g) for g in job.grid], "sizes": {fmt_width(w): int(model.film_size(w)) for w in widths}}
    encoding = getattr(model, "lambda_encoding", "ro")
    if encoding != "ro":  # absent means "ro": older bundles, and "ro" ones stay as they were
        film["lambda_encoding"] = encoding
    return film


def _preprocessing(payload: Dict[str, Any], input_shape, num_classes: int) -> Dict[str, Any]:
    """The checkpoint's raw → input transform; a built-in dataset's own when an older checkpoint
    lacks it; else the documented default (float32 [0, 1] at the model's size)."""
    from oat_edge.preprocess import make_contract

    ds = payload.get("dataset") or {}
    pre = ds.get("preprocessing")
    if not pre:
        try:
            from oat_edge.training.datasets import builtin_preprocessing

            pre = builtin_preprocessing(ds.get("name"))
        except (ImportError, OatEdgeError, TypeError):
            pre = make_contract(channels=input_shape[0], image_hw=input_shape[1:], source_dtype="float32",
                                mean=ds.get("mean"), std=ds.get("std"))
    pre = plain(dict(pre))
    names = pre.get("class_names")
    if names is not None and len(names) != num_classes:
        pre["class_names"] = None
    return pre


def _manifest(job: ExportJob, checkpoint, entries, calibration, op_table) -> Dict[str, Any]:
    model, payload, widths = job.model, job.payload, job.widths
    return new_manifest(
        tools={**_versions(), "opset": int(job.opset), "exporter": "torch.export + torch.onnx (dynamo)"},
        source={
            "checkpoint_sha256": sha256_file(checkpoint), "method": payload["method"], "epoch": payload.get("epoch"),
            "arch": payload["arch"], "arch_kwargs": plain(payload["arch_kwargs"]),
        },
        model={
            "arch": payload["arch"], "num_classes": int(model.classifier.out_features),
            "input_shape": list(job.input_shape), "value_range": [0.0, 1.0], "widths": [float(w) for w in widths],
            "trained_widths": [float(w) for w in model.widths], "train_lambdas": [float(x) for x in model.train_lambdas],
            "dataset": plain({k: v for k, v in (payload.get("dataset") or {}).items()}),
            "film_sites": len(model.film_sites()), "code_dim": int(model.code_dim), "dual_bn": bool(model.dual_bn),
        },
        batch=job.batch,
        paths=entries["paths"],
        baked=entries["baked"],
        film=_film_section(job, model, widths),
        parity_reference={"n_images": int(min(len(job.images), N_REFERENCE_IMAGES)), "tolerance": VERIFY_TOL,
                          "entries": job.reference_entries},
        parity_inputs={"source": job.image_source, "n_images": int(len(job.images))},
        opcheck={**op_table, "passed": True},
        calibration=calibration,
        notes=job.notes,
        preprocessing=_preprocessing(payload, job.input_shape, int(model.classifier.out_features)),
        export={
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "seconds": {k: round(v, 3) for k, v in job.timings.items()},
        },
        precisions=_precisions_section(job),
    )


def _precisions_section(job: ExportJob) -> Optional[Dict[str, Any]]:
    if job.precisions == ["fp32"]:
        return None
    quant = None
    if job.quant_images is not None:
        quant = {"n_images": int(job.quant_images.shape[0]), "source": job.quant_source,
                 "batch": export_precision.QUANT_BATCH,
                 "film_lambdas": "the path's training λ, one per batch, cycled (batches shrink so that each λ gets one)"}
    return {p: export_precision.describe(p, quant, job.int8_activations) for p in job.precisions if p != "fp32"}
