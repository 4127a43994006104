"""The manifest as typed, read-only records (docs/bundle.md), built from the dict that
``schema.parse_manifest`` has validated: every field here has its type and range checked
already, and an absent optional field has its documented default. ``raw`` keeps the whole
validated dict, for fields the schema leaves open (tools, source, notes, parity figures, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from oat_edge.lambda_code import DEFAULT_ENCODING
from oat_edge.mode import bn_branch
from oat_edge.precision import DEFAULT as DEFAULT_PRECISION


@dataclass(frozen=True)
class FileRef:
    """A file of the bundle: its bundle-relative name and sha256."""

    file: str
    sha256: str
    bytes: Optional[int] = None


def _file_refs(items) -> Tuple[FileRef, ...]:
    return tuple(FileRef(x["file"], x["sha256"], x.get("bytes")) for x in items or ())


@dataclass(frozen=True)
class PathEntry:
    """An ONNX file: a FiLM path (``kind`` "path", λ as the ``film`` input) or a baked path
    (``kind`` "baked", one λ folded in, ``lam`` set)."""

    kind: str
    id: str
    file: str
    sha256: str
    width: float
    bn: str
    precision: str
    lam: Optional[float] = None
    film_size: int = 0
    ops: Tuple[str, ...] = ()
    external_data: Tuple[FileRef, ...] = ()

    @classmethod
    def from_dict(cls, e: Mapping[str, Any], kind: str) -> "PathEntry":
        lam = float(e["lam"]) if kind == "baked" else None
        bn = e.get("bn") or bn_branch(lam)
        return cls(kind=kind, id=e["id"], file=e["file"], sha256=e["sha256"], width=float(e["width"]), bn=bn,
                   precision=e.get("precision") or DEFAULT_PRECISION, lam=lam, film_size=int(e.get("film_size") or 0),
                   ops=tuple(e.get("ops") or ()), external_data=_file_refs(e.get("external_data")))


@dataclass(frozen=True)
class ModelInfo:
    arch: Optional[str]
    num_classes: int
    input_shape: Tuple[int, int, int]
    widths: Tuple[float, ...]
    train_lambdas: Tuple[float, ...]
    value_range: Optional[Tuple[float, float]]


@dataclass(frozen=True)
class TensorNames:
    """The ONNX tensor names of the image input, the FiLM input and the logits output."""

    images: str
    film: str
    logits: str


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class FilmInfo:
    """film.npz: the FiLM generators and tables; ``sizes`` maps a width to its FiLM vector length."""

    file: str
    sha256: str
    negative_slope: float
    lambda_encoding: str
    code_dim: Optional[int]
    grid: Tuple[float, ...]
    sizes: Dict[float, int]


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine built for one path on one device (``oat_edge.bundle.engines``)."""

    path_id: str
    file: str
    sha256: str
    device: str
    precision: str
    tensorrt_version: Optional[str]
    onnx_sha256: Optional[str]


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json, typed. ``entries`` are the paths then the baked paths, the
    index order of ``ModeTable``."""

    model: ModelInfo
    io: TensorNames
    batch: BatchProfile
    paths: Tuple[PathEntry, ...]
    baked: Tuple[PathEntry, ...]
    film: FilmInfo
    engines: Tuple[EngineEntry, ...]
    parity_reference: Optional[FileRef]
    preprocessing: Optional[Mapping[str, Any]]
    calibration: Optional[Mapping[str, Any]]
    raw: Mapping[str, Any]

    @property
    def entries(self) -> Tuple[PathEntry, ...]:
        return self.paths + self.baked

    @classmethod
    def from_dict(cls, m: Mapping[str, Any]) -> "Manifest":
        """From a dict that ``schema.parse_manifest`` accepted."""
        model, io, batch, film = m["model"], m["io"], m["batch"], m["film"]
        ref = m.get("parity_reference")
        return cls(
            model=ModelInfo(model.get("arch"), int(model["num_classes"]), tuple(int(v) for v in model["input_shape"]),
                            tuple(float(w) for w in model["widths"]), tuple(float(x) for x in model["train_lambdas"]),
                            tuple(model["value_range"]) if model.get("value_range") is not None else None),
            io=TensorNames(io["images"]["name"], io["film"]["name"], io["logits"]["name"]),
            batch=BatchProfile(batch["min"], batch["min"] if batch.get("opt") is None else batch["opt"], batch["max"]),
            paths=tuple(PathEntry.from_dict(e, "path") for e in m["paths"]),
            baked=tuple(PathEntry.from_dict(e, "baked") for e in m.get("baked") or ()),
            film=FilmInfo(film["file"], film["sha256"], float(film["negative_slope"]),
                          film.get("lambda_encoding") or DEFAULT_ENCODING, film.get("code_dim"),
                          tuple(float(x) for x in film.get("grid") or ()),
                          {float(k): int(v) for k, v in (film.get("sizes") or {}).items()}),
            engines=tuple(EngineEntry(e["path_id"], e["file"], e["sha256"], e["device"], e["precision"],
                                      e.get("tensorrt_version"), e.get("onnx_sha256")) for e in m.get("engines") or ()),
            parity_reference=FileRef(ref["file"], ref["sha256"], ref.get("bytes")) if ref else None,
            preprocessing=m.get("preprocessing"),
            calibration=m.get("calibration"),
            raw=m,
        )
