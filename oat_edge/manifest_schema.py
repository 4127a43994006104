"""The typed schema of manifest.json (docs/bundle.md), shared by the Runtime, ``verify``,
``inspect`` and ``build-engines``: every field the runtime reads is validated here, with its
type, range and cross-references, before anything uses it.

``parse_manifest(data, where)`` turns the bytes of a manifest into a plain dict (the same dict
the rest of the code has always used) or raises one BundleError line naming the field, e.g.
``manifest.json: paths[0].bn: Input should be 'c' or 'a' (got 'x')``. Fields not listed here
(tools, export timings, notes, ...) are kept as they are; unknown fields are allowed so that
newer exporters can add information. Validators raise ValueError, as pydantic requires; it
collects them into the ValidationError that ``parse_manifest`` reports as that BundleError.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oat_edge.errors import BundleError
from oat_edge.mode import WIDTH_TOL, bn_branch

SCHEMA = "oat-edge/bundle"
SCHEMA_VERSION = 1
MAX_DEPTH = 24  # the real manifest nests 5 deep
MAX_CLASSES = 100_000
MAX_FILM = 1 << 26
MAX_BATCH = 1 << 20

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(min_length=1, max_length=4096)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Width = Annotated[float, Field(gt=0.0, le=1.0)]
PosInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class FileRef(_Strict):
    file: Name
    sha256: Sha256
    bytes: Optional[Annotated[int, Field(ge=0)]] = None


Precision = Optional[Literal["fp32", "fp16", "int8"]]  # absent: fp32


class PathEntry(FileRef):
    id: Name
    bn: Literal["c", "a"]
    width: Width
    film_size: Annotated[int, Field(ge=1, le=MAX_FILM)]
    ops: List[str] = []
    external_data: List[FileRef] = []
    precision: Precision = None


class BakedEntry(FileRef):
    id: Name
    lam: Unit
    width: Width
    bn: Optional[Literal["c", "a"]] = None
    ops: List[str] = []
    external_data: List[FileRef] = []
    precision: Precision = None

    @model_validator(mode="after")
    def _bn_matches_lambda(self):
        if self.bn is not None and self.bn != bn_branch(self.lam):
            raise ValueError(f"bn {self.bn!r} does not match λ = {self.lam:g} (BN_c only for λ = 0)")
        return self


class Model(_Strict):
    arch: Optional[str] = None
    num_classes: Annotated[int, Field(ge=1, le=MAX_CLASSES)]
    input_shape: Annotated[List[Annotated[int, Field(ge=1, le=1 << 16)]], Field(min_length=3, max_length=3)]
    widths: Annotated[List[Width], Field(min_length=1, max_length=64)]
    train_lambdas: Annotated[List[Unit], Field(min_length=1, max_length=4096)]
    value_range: Optional[Annotated[List[float], Field(min_length=2, max_length=2)]] = None

    @model_validator(mode="after")
    def _unique_widths(self):
        ws = sorted(self.widths)
        if any(b - a <= WIDTH_TOL for a, b in zip(ws, ws[1:])):
            raise ValueError(f"widths {self.widths} repeat a width")
        return self


class Tensor(_Strict):
    name: Name
    dtype: Optional[Literal["float32"]] = None
    shape: Optional[List[Any]] = None


class IO(_Strict):
    images: Tensor
    film: Tensor
    logits: Tensor

    @model_validator(mode="after")
    def _distinct(self):
        names = [self.images.name, self.film.name, self.logits.name]
        if len(set(names)) != 3:
            raise ValueError(f"tensor names {names} must be distinct")
        return self


class Batch(_Strict):
    min: Annotated[int, Field(ge=1, le=MAX_BATCH)]
    opt: Optional[Annotated[int, Field(ge=1, le=MAX_BATCH)]] = None
    max: Annotated[int, Field(ge=1, le=MAX_BATCH)]

    @model_validator(mode="after")
    def _ordered(self):
        opt = self.opt if self.opt is not None else self.min
        if not self.min <= opt <= self.max:
            raise ValueError(f"needs min ≤ opt ≤ max, got {self.min}, {opt}, {self.max}")
        return self


class Film(FileRef):
    negative_slope: Annotated[float, Field(ge=0.0, le=1.0)]
    code_dim: Optional[PosInt] = None
    lambda_encoding: Optional[Literal["ro", "ro-slerp", "scalar"]] = None  # absent: "ro"
    grid: Optional[List[Unit]] = None
    sizes: Dict[str, Annotated[int, Field(ge=1, le=MAX_FILM)]] = {}


class ParityItem(_Strict):
    id: Name
    lam: Unit
    key: Name


class ParityReference(FileRef):
    entries: List[ParityItem]
    n_images: Optional[PosInt] = None
    tolerance: Optional[Annotated[float, Field(gt=0.0)]] = None


class Engine(FileRef):
    path_id: Name
    device: Name
    precision: Literal["fp16", "fp32"]
    tensorrt_version: Optional[str] = None
    onnx_sha256: Optional[Sha256] = None
    kind: Optional[str] = None


class CalibrationRecord(_Strict):
    lam: Unit
    width: Width
    sa: Unit
    ra: Dict[str, Unit]
    n: Optional[Annotated[int, Field(ge=0)]] = None
    precision: Precision = None


class Calibration(_Strict):
    records: Annotated[List[CalibrationRecord], Field(min_length=1)]
    attacks: Optional[Dict[str, Any]] = None
    n_images: Optional[Annotated[int, Field(ge=0)]] = None
    robust_metric: Optional[str] = None


class Resize(_Strict):
    size: Annotated[int, Field(ge=1, le=1 << 13)]  # (the shorter side; frames are bounded in pixels too)
    mode: Literal["shorter_side"]
    interpolation: Literal["triangle_antialias"]


class Crop(_Strict):
    size: Annotated[List[Annotated[int, Field(ge=1, le=1 << 13)]], Field(min_length=2, max_length=2)]
    mode: Literal["center"]


class Preprocessing(_Strict):
    """The raw-pixel → model-input transform (oat_edge/preprocess.py, docs/bundle.md). Every
    field is optional: a missing one means its documented default (float32 [0, 1] NCHW RGB
    input at the model's size, scale 1)."""
    source_dtype: Optional[Literal["uint8", "float32"]] = None
    source_range: Optional[Annotated[List[float], Field(min_length=2, max_length=2)]] = None
    color: Optional[Literal["rgb", "grey"]] = None
    grey_weights: Optional[Annotated[List[float], Field(min_length=3, max_length=3)]] = None
    layout: Optional[Literal["NCHW"]] = None
    resize: Optional[Resize] = None
    crop: Optional[Crop] = None
    scale: Optional[Annotated[float, Field(gt=0.0)]] = None
    mean: Optional[List[float]] = None
    std: Optional[List[Annotated[float, Field(gt=0.0)]]] = None
    class_names: Optional[List[str]] = None


class Manifest(_Strict):
    schema_: Literal["oat-edge/bundle"] = Field(alias="schema")
    schema_version: Literal[1]
    tools: Dict[str, Any]
    model: Model
    io: IO
    batch: Batch
    paths: Annotated[List[PathEntry], Field(min_length=1)]
    baked: Optional[List[BakedEntry]] = None
    baked_modes: Optional[List[Dict[str, Any]]] = None
    film: Film
    parity_reference: Optional[ParityReference] = None
    engines: Optional[List[Engine]] = None
    calibration: Optional[Calibration] = None
    notes: Optional[List[Any]] = None
    preprocessing: Optional[Preprocessing] = None

    @model_validator(mode="after")
    def _cross_references(self):
        widths = self.model.widths

        def width_index(w: float, what: str) -> int:
            for i, tw in enumerate(widths):
                if abs(tw - w) <= WIDTH_TOL:
                    return i
            raise ValueError(f"{what} has width {w:g}, which model.widths {widths} does not list")

        ids, files, branches = set(), set(), set()
        for i, e in enumerate(self.paths):
            wi = width_index(e.width, f"paths[{i}]")
            prec = e.precision or "fp32"
            if (e.bn, wi, prec) in branches:
                raise ValueError(f"paths[{i}]: a second {e.bn!r} {prec} path for width {e.width:g}")
            branches.add((e.bn, wi, prec))
            for key, v in (("id", e.id), ("file", e.file)):
                seen = ids if key == "id" else files
                if v in seen:
                    raise ValueError(f"paths[{i}].{key} {v!r} appears twice")
                seen.add(v)
        for i, e in enumerate(self.baked or []):
            width_index(e.width, f"baked[{i}]")
            if e.id in ids:
                raise ValueError(f"baked[{i}].id {e.id!r} appears twice")
            ids.add(e.id)
        sizes = {}
        for key, size in self.film.sizes.items():
            try:
                sizes[width_index(float(key), f"film.sizes[{key!r}]")] = size
            except ValueError as err:
                raise ValueError(str(err)) from None
        for i, e in enumerate(self.paths):
            wi = width_index(e.width, f"paths[{i}]")
            if wi in sizes and sizes[wi] != e.film_size:
                raise ValueError(f"paths[{i}].film_size {e.film_size} differs from film.sizes ({sizes[wi]})")
        pre = self.preprocessing
        if pre is not None:
            channels = self.model.input_shape[0]
            if pre.color is not None and (pre.color == "grey") != (channels == 1):
                raise ValueError(f"preprocessing.color {pre.color!r} does not match {channels} input channel(s)")
            if pre.crop is not None and list(pre.crop.size) != list(self.model.input_shape[1:]):
                raise ValueError(f"preprocessing.crop.size {pre.crop.size} differs from the input's "
                                 f"{self.model.input_shape[1:]}")
            for name in ("mean", "std"):
                values = getattr(pre, name)
                if values is not None and len(values) != channels:
                    raise ValueError(f"preprocessing.{name} has {len(values)} values for {channels} input channel(s)")
            if pre.source_range is not None and not pre.source_range[0] <= pre.source_range[1]:
                raise ValueError(f"preprocessing.source_range {pre.source_range} is not [low, high] with low <= high")
            if pre.class_names is not None and len(pre.class_names) != self.model.num_classes:
                raise ValueError(f"preprocessing.class_names has {len(pre.class_names)} names for "
                                 f"{self.model.num_classes} classes")
        if self.parity_reference is not None:
            for i, item in enumerate(self.parity_reference.entries):
                if item.id not in ids:
                    raise ValueError(f"parity_reference.entries[{i}] names unknown path {item.id!r}")
        return self


def _depth(obj: Any) -> int:
    """Nesting depth, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, dict):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((v, d + 1) for v in value.values())
        elif isinstance(value, list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((v, d + 1) for v in value)
    return deepest


def _loc(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = "schema" if part == "schema_" else str(part)
            # pydantic adds the type of a union/literal member to the location: leave it out
            if part in ("float", "int", "str", "list", "dict", "bool") or part.startswith(("function-", "literal[")):
                continue
            out += ("." if out else "") + part
    return out or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unique_keys(pairs) -> Dict[str, Any]:
    """A JSON object, refusing a key given twice (JSON parsers disagree on which one wins, so a
    signed manifest could mean different things to different readers)."""
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice in one object")
        out[k] = v
    return out


def parse_manifest(data: bytes, where: str = "manifest.json") -> Dict[str, Any]:
    """The manifest as a dict, after validating it against the schema; BundleError (one line)
    for invalid JSON, nesting deeper than MAX_DEPTH, an unknown schema or version, a field of
    the wrong type or range, or a broken cross-reference."""
    try:
        text = data.decode("utf-8")
        manifest = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise BundleError(f"{where} nests deeper than any manifest (more than {MAX_DEPTH} levels)") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{where} is not valid JSON ({str(e)[:200]}); the bundle is damaged, re-export it") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{where} is not an oat-edge bundle manifest (a JSON {type(manifest).__name__}, not an object)")
    if _depth(manifest) > MAX_DEPTH:
        raise BundleError(f"{where} nests deeper than any manifest (more than {MAX_DEPTH} levels)")
    if manifest.get("schema") != SCHEMA:
        raise BundleError(f"{where} is not an oat-edge bundle manifest (schema {_short(manifest.get('schema'))})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool) or not isinstance(version, int):
        if isinstance(version, str):
            raise BundleError(f"{where} has schema_version {version!r}, a string; this oat-edge reads the "
                              f"integer {SCHEMA_VERSION} (write \"schema_version\": {SCHEMA_VERSION} without quotes)")
        raise BundleError(
            f"{where} has bundle schema version {_short(version)}; this oat-edge reads version {SCHEMA_VERSION}: "
            "re-export the bundle with this version's `oat-edge export`"
        )
    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        msg = str(err.get("msg", "invalid")).replace("Value error, ", "")
        detail = f" (got {_short(err['input'])})" if "input" in err and err.get("type") != "value_error" else ""
        more = f"; {e.error_count() - 1} more problem(s)" if e.error_count() > 1 else ""
        raise BundleError(f"{where}: {_loc(err.get('loc', ()))}: {msg}{detail}{more}") from None
    except RecursionError:  # pragma: no cover - depth is checked above
        raise BundleError(f"{where} nests too deep") from None
    return manifest
