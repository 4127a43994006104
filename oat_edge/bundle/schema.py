"""The typed schema of manifest.json (docs/bundle.md), shared by the Runtime, ``verify``,
``inspect`` and ``build-engines``: every field the runtime reads is validated here, with its
type, range and cross-references, before anything uses it.

``parse_manifest(data, where)`` turns the bytes of a manifest into the validated dict (from
which ``typed.Manifest.from_dict`` builds the typed records) or raises one BundleError line
naming the field, e.g.
``manifest.json: paths[0].bn: Input should be 'c' or 'a' (got 'x')``. Fields not listed here
(tools, export timings, notes, ...) are kept as they are; unknown fields are allowed so that
newer exporters can add information.

The checker is a few declarative types in plain Python rather than a validation library, so
the runtime needs nothing beyond numpy and onnxruntime to load an unsigned bundle. Types are
strict: no string for a number, no float for an integer, no bool for either, no NaN or ±inf.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from oat_edge.bundle.names import SCHEMA, SCHEMA_VERSION
from oat_edge.errors import BundleError
from oat_edge.mode import WIDTH_TOL, bn_branch

MAX_DEPTH = 24  # the real manifest nests 5 deep
MAX_CLASSES = 100_000
MAX_FILM = 1 << 26
MAX_BATCH = 1 << 20


class _Invalid(Exception):
    def __init__(self, loc: Tuple, msg: str, value: Any = None, show_value: bool = True):
        super().__init__(msg)
        self.loc, self.msg, self.value, self.show_value = loc, msg, value, show_value


# --- value types: each is a function (value, loc) -> None that raises _Invalid ------------------
def Str(min_len: int = 0, max_len: int = 1 << 20, pattern: Optional[str] = None):
    rx = re.compile(pattern) if pattern else None

    def check(v, loc):
        if not isinstance(v, str):
            raise _Invalid(loc, "Input should be a valid string", v)
        if not min_len <= len(v) <= max_len:
            raise _Invalid(loc, f"String should have {min_len} to {max_len} characters", v)
        if rx is not None and not rx.fullmatch(v):
            raise _Invalid(loc, f"String should match pattern '{pattern}'", v)
    return check


def _bounds(v, loc, ge, gt, le):
    if ge is not None and not v >= ge:
        raise _Invalid(loc, f"Input should be greater than or equal to {ge}", v)
    if gt is not None and not v > gt:
        raise _Invalid(loc, f"Input should be greater than {gt}", v)
    if le is not None and not v <= le:
        raise _Invalid(loc, f"Input should be less than or equal to {le}", v)


def Num(ge=None, gt=None, le=None):
    def check(v, loc):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Invalid(loc, "Input should be a valid number", v)
        if not math.isfinite(v):
            raise _Invalid(loc, "Input should be a finite number", v)
        _bounds(v, loc, ge, gt, le)
    return check


def Int(ge=None, le=None):
    def check(v, loc):
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(loc, "Input should be a valid integer", v)
        _bounds(v, loc, ge, None, le)
    return check


def Lit(*values):
    text = " or ".join(repr(x) for x in values) if len(values) <= 2 else \
        ", ".join(repr(x) for x in values[:-1]) + f" or {values[-1]!r}"

    def check(v, loc):
        if isinstance(v, bool) or not any(type(v) is type(x) and v == x for x in values):
            raise _Invalid(loc, f"Input should be {text}", v)
    return check


def ListOf(item=None, min_len: int = 0, max_len: int = 1 << 30):
    def check(v, loc):
        if not isinstance(v, list):
            raise _Invalid(loc, "Input should be a valid list", v)
        if not min_len <= len(v) <= max_len:
            raise _Invalid(loc, f"List should have {min_len} to {max_len} items, not {len(v)}", v, False)
        if item is not None:
            for i, x in enumerate(v):
                item(x, loc + (i,))
    return check


def DictOf(value=None):
    def check(v, loc):
        if not isinstance(v, dict):
            raise _Invalid(loc, "Input should be a valid dictionary", v)
        if value is not None:
            for k, x in v.items():
                value(x, loc + (k,))
    return check


def Opt(inner):
    """May be null (and absent, like every field with a default)."""
    def check(v, loc):
        if v is not None:
            inner(v, loc)
    return check


_REQUIRED = object()


def Obj(fields: Dict[str, Any], rule: Optional[Callable[[Dict[str, Any]], None]] = None):
    """A JSON object: ``fields`` maps a name to its type, or to (type, default) when it may be
    absent; other keys are allowed and kept. ``rule`` checks the object as a whole and raises
    ValueError."""
    spec = {k: (f if isinstance(f, tuple) else (f, _REQUIRED)) for k, f in fields.items()}

    def check(v, loc):
        if not isinstance(v, dict):
            raise _Invalid(loc, "Input should be an object", v)
        for name, (kind, default) in spec.items():
            if name not in v:
                if default is _REQUIRED:
                    raise _Invalid(loc + (name,), "Field required", None, False)
                continue
            kind(v[name], loc + (name,))
        if rule is not None:
            try:
                rule(v)
            except ValueError as e:
                raise _Invalid(loc, str(e), None, False) from None
    return check


def _optional(kind):
    return (Opt(kind), None)


Sha256 = Str(pattern=r"[0-9a-f]{64}")
Name = Str(min_len=1, max_len=4096)
Unit = Num(ge=0.0, le=1.0)
Width = Num(gt=0.0, le=1.0)
PosInt = Int(ge=1)
Precision = _optional(Lit("fp32", "fp16", "int8"))  # absent: fp32
Branch = Lit("c", "a")

_FILE_REF = {"file": Name, "sha256": Sha256, "bytes": _optional(Int(ge=0))}
FileRef = Obj(_FILE_REF)


def _bn_matches_lambda(e):
    if e.get("bn") is not None and e["bn"] != bn_branch(e["lam"]):
        raise ValueError(f"bn {e['bn']!r} does not match λ = {e['lam']:g} (BN_c only for λ = 0)")


PathEntry = Obj(dict(_FILE_REF, id=Name, bn=Branch, width=Width, film_size=Int(ge=1, le=MAX_FILM),
                     ops=(ListOf(Str()), []), external_data=(ListOf(FileRef), []), precision=Precision))
BakedEntry = Obj(dict(_FILE_REF, id=Name, lam=Unit, width=Width, bn=_optional(Branch),
                      ops=(ListOf(Str()), []), external_data=(ListOf(FileRef), []), precision=Precision),
                 _bn_matches_lambda)


def _unique_widths(m):
    ws = sorted(m["widths"])
    if any(b - a <= WIDTH_TOL for a, b in zip(ws, ws[1:])):
        raise ValueError(f"widths {m['widths']} repeat a width")


Model = Obj({
    "arch": _optional(Str()),
    "num_classes": Int(ge=1, le=MAX_CLASSES),
    "input_shape": ListOf(Int(ge=1, le=1 << 16), 3, 3),
    "widths": ListOf(Width, 1, 64),
    "train_lambdas": ListOf(Unit, 1, 4096),
    "value_range": _optional(ListOf(Num(), 2, 2)),
}, _unique_widths)

Tensor = Obj({"name": Name, "dtype": _optional(Lit("float32")), "shape": _optional(ListOf())})


def _distinct(io):
    names = [io["images"]["name"], io["film"]["name"], io["logits"]["name"]]
    if len(set(names)) != 3:
        raise ValueError(f"tensor names {names} must be distinct")


IO = Obj({"images": Tensor, "film": Tensor, "logits": Tensor}, _distinct)


def _ordered(b):
    opt = b.get("opt") if b.get("opt") is not None else b["min"]
    if not b["min"] <= opt <= b["max"]:
        raise ValueError(f"needs min ≤ opt ≤ max, got {b['min']}, {opt}, {b['max']}")


BatchSize = Int(ge=1, le=MAX_BATCH)
Batch = Obj({"min": BatchSize, "opt": _optional(BatchSize), "max": BatchSize}, _ordered)

Film = Obj(dict(_FILE_REF, negative_slope=Num(ge=0.0, le=1.0), code_dim=_optional(PosInt),
                lambda_encoding=_optional(Lit("ro", "ro-slerp", "scalar")),  # absent: "ro"
                grid=_optional(ListOf(Unit)), sizes=(DictOf(Int(ge=1, le=MAX_FILM)), {})))

ParityReference = Obj(dict(_FILE_REF, entries=ListOf(Obj({"id": Name, "lam": Unit, "key": Name})),
                           n_images=_optional(PosInt), tolerance=_optional(Num(gt=0.0))))

Engine = Obj(dict(_FILE_REF, path_id=Name, device=Name, precision=Lit("fp16", "fp32"),
                  tensorrt_version=_optional(Str()), onnx_sha256=_optional(Sha256), kind=_optional(Str())))

CalibrationRecord = Obj({"lam": Unit, "width": Width, "sa": Unit, "ra": DictOf(Unit),
                         "n": _optional(Int(ge=0)), "precision": Precision})
Calibration = Obj({"records": ListOf(CalibrationRecord, 1), "attacks": _optional(DictOf()),
                   "n_images": _optional(Int(ge=0)), "robust_metric": _optional(Str())})

Size = Int(ge=1, le=1 << 13)  # the shorter side / crop; frames are bounded in pixels too
# The raw-pixel → model-input transform (oat_edge/preprocess.py, docs/bundle.md). Every field is
# optional: a missing one means its documented default (float32 [0, 1] NCHW RGB input at the
# model's size, scale 1).
Preprocessing = Obj({
    "source_dtype": _optional(Lit("uint8", "float32")),
    "source_range": _optional(ListOf(Num(), 2, 2)),
    "color": _optional(Lit("rgb", "grey")),
    "grey_weights": _optional(ListOf(Num(), 3, 3)),
    "layout": _optional(Lit("NCHW")),
    "resize": _optional(Obj({"size": Size, "mode": Lit("shorter_side"),
                             "interpolation": Lit("triangle_antialias")})),
    "crop": _optional(Obj({"size": ListOf(Size, 2, 2), "mode": Lit("center")})),
    "scale": _optional(Num(gt=0.0)),
    "mean": _optional(ListOf(Num())),
    "std": _optional(ListOf(Num(gt=0.0))),
    "class_names": _optional(ListOf(Str())),
})


def _cross_references(m):
    widths = m["model"]["widths"]

    def width_index(w: float, what: str) -> int:
        for i, tw in enumerate(widths):
            if abs(tw - w) <= WIDTH_TOL:
                return i
        raise ValueError(f"{what} has width {w:g}, which model.widths {widths} does not list")

    ids = _unique_entries(m, width_index)
    _film_sizes_match(m, width_index)
    if m.get("preprocessing") is not None:
        _preprocessing_matches_model(m["preprocessing"], m["model"])
    ref = m.get("parity_reference")
    if ref is not None:
        for i, item in enumerate(ref["entries"]):
            if item["id"] not in ids:
                raise ValueError(f"parity_reference.entries[{i}] names unknown path {item['id']!r}")


def _unique_entries(m, width_index) -> set:
    """One path per (bn, width, precision), no id or file twice; returns every entry id."""
    ids, files, branches = set(), set(), set()
    for i, e in enumerate(m["paths"]):
        wi = width_index(e["width"], f"paths[{i}]")
        prec = e.get("precision") or "fp32"
        if (e["bn"], wi, prec) in branches:
            raise ValueError(f"paths[{i}]: a second {e['bn']!r} {prec} path for width {e['width']:g}")
        branches.add((e["bn"], wi, prec))
        for key, seen in (("id", ids), ("file", files)):
            if e[key] in seen:
                raise ValueError(f"paths[{i}].{key} {e[key]!r} appears twice")
            seen.add(e[key])
    for i, e in enumerate(m.get("baked") or []):
        width_index(e["width"], f"baked[{i}]")
        if e["id"] in ids:
            raise ValueError(f"baked[{i}].id {e['id']!r} appears twice")
        ids.add(e["id"])
    return ids


def _film_sizes_match(m, width_index) -> None:
    sizes = {}
    for key, size in (m["film"].get("sizes") or {}).items():
        try:
            w = float(key)
        except ValueError:
            raise ValueError(f"film.sizes key {key!r} is not a width") from None
        sizes[width_index(w, f"film.sizes[{key!r}]")] = size
    for i, e in enumerate(m["paths"]):
        wi = width_index(e["width"], f"paths[{i}]")
        if wi in sizes and sizes[wi] != e["film_size"]:
            raise ValueError(f"paths[{i}].film_size {e['film_size']} differs from film.sizes ({sizes[wi]})")


def _preprocessing_matches_model(pre, model) -> None:
    channels = model["input_shape"][0]
    if pre.get("color") is not None and (pre["color"] == "grey") != (channels == 1):
        raise ValueError(f"preprocessing.color {pre['color']!r} does not match {channels} input channel(s)")
    crop = pre.get("crop")
    if crop is not None and list(crop["size"]) != list(model["input_shape"][1:]):
        raise ValueError(f"preprocessing.crop.size {crop['size']} differs from the input's {model['input_shape'][1:]}")
    for name in ("mean", "std"):
        values = pre.get(name)
        if values is not None and len(values) != channels:
            raise ValueError(f"preprocessing.{name} has {len(values)} values for {channels} input channel(s)")
    low_high = pre.get("source_range")
    if low_high is not None and not low_high[0] <= low_high[1]:
        raise ValueError(f"preprocessing.source_range {low_high} is not [low, high] with low <= high")
    names = pre.get("class_names")
    if names is not None and len(names) != model["num_classes"]:
        raise ValueError(f"preprocessing.class_names has {len(names)} names for {model['num_classes']} classes")


Manifest = Obj({
    "schema": Lit(SCHEMA),
    "schema_version": Lit(SCHEMA_VERSION),
    "tools": DictOf(),
    "model": Model,
    "io": IO,
    "batch": Batch,
    "paths": ListOf(PathEntry, 1),
    "baked": _optional(ListOf(BakedEntry)),
    "baked_modes": _optional(ListOf(DictOf())),
    "film": Film,
    "parity_reference": _optional(ParityReference),
    "engines": _optional(ListOf(Engine)),
    "calibration": _optional(Calibration),
    "notes": _optional(ListOf()),
    "preprocessing": _optional(Preprocessing),
}, _cross_references)


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
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
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
        Manifest(manifest, ())
    except _Invalid as e:
        detail = f" (got {_short(e.value)})" if e.show_value else ""
        raise BundleError(f"{where}: {_loc(e.loc)}: {e.msg}{detail}") from None
    return manifest
