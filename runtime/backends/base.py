"""The one interface every backend implements (Polygraphy's runner idea, kept small).

A runner is built once per Runtime with every path of the bundle already loaded (sessions,
modules or engines): switching modes never creates anything. The hot call is
``run(path_index, images, film)``; ``infer_path`` is the same by path id for tools (bench,
verify) and ``open_naive`` builds a fresh session for one path — the "load on switch" baseline
the benchmark compares mode switching against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from oat_edge.errors import BundleError, InputError


@dataclass(frozen=True)
class PathSpec:
    """One ONNX graph of the bundle as a runner needs it."""

    index: int
    id: str
    file: Path
    kind: str  # "film" (BN path, FiLM vector input) or "baked" (one mode, images only)
    bn: str
    width: float
    lam: Optional[float]  # baked paths only
    film_size: int  # 0 for baked paths
    sha256: str = ""
    ops: Tuple[str, ...] = ()
    precision: str = "fp32"  # "fp32" | "fp16" | "int8" (oat_edge.precision)

    @property
    def has_film(self) -> bool:
        return self.kind == "film"


@dataclass(frozen=True)
class IOSpec:
    images: str = "images"
    film: str = "film"
    logits: str = "logits"
    input_shape: Tuple[int, ...] = ()  # [C, H, W]
    num_classes: int = 0
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 1
    extra: Dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class BundleContext:
    """What a runner may need besides its paths: the manifest (engines, profiles), the bundle
    folder, and the C++ extension module when the runtime uses it (else None)."""

    manifest: Dict[str, object]
    dir: Path
    ext: object = None
    # ONNX file -> (its bytes, [(external data location, bytes)]) as load_manifest verified them:
    # sessions are built from these, never by reopening a path that may have been swapped since.
    # Emptied once the runner is built.
    verified: Dict[Path, Tuple[bytes, List[Tuple[str, bytes]]]] = field(default_factory=dict, compare=False)


class Runner:
    """Base class. Subclasses load every path in ``__init__`` and implement ``run``. Every
    runner is built as ``cls(paths, io, threads=, device=, bundle=BundleContext, **options)``."""

    name = "base"
    #: True when ``run_cuda`` accepts CUDA tensors and returns CUDA tensors (no host copy).
    accepts_cuda = False

    def __init__(self, paths: Sequence[PathSpec], io: IOSpec, threads: Optional[int] = None,
                 device: Optional[str] = None):
        self.paths: List[PathSpec] = list(paths)
        self.io = io
        self.threads = threads
        self.device = device or "cpu"
        self._by_id = {p.id: p for p in self.paths}

    # --- hot path -----------------------------------------------------------------------------
    def run(self, path_index: int, images: np.ndarray, film: Optional[np.ndarray]) -> np.ndarray:
        """Logits [batch, classes] of one path for validated float32 images (and the path's
        flat FiLM vector, None for baked paths)."""
        raise NotImplementedError

    def run_cuda(self, path_index: int, images, film: Optional[np.ndarray]):
        raise NotImplementedError(f"the {self.name} backend does not take CUDA tensors")

    # --- tools --------------------------------------------------------------------------------
    def path(self, path_id: str) -> PathSpec:
        try:
            return self._by_id[path_id]
        except KeyError:
            raise BundleError(f"this bundle has no path {path_id!r}; it has {sorted(self._by_id)}") from None

    def infer_path(self, path_id: str, images: np.ndarray, film: Optional[np.ndarray] = None) -> np.ndarray:
        """Run one path by id (no mode register): images float32 [batch, C, H, W]; ``film`` the
        flat FiLM vector for BN paths, None for baked paths."""
        spec = self.path(path_id)
        film = self._check_film(spec, film)
        return self.run(spec.index, np.ascontiguousarray(images, dtype=np.float32), film)

    def open_naive(self, path_id: str) -> Callable[..., np.ndarray]:
        """A freshly loaded session of one path, as a callable ``f(images, film=None)`` — what a
        runtime without preloaded paths would pay on every mode switch."""
        raise NotImplementedError(f"the {self.name} backend has no naive-switch baseline")

    #: True when ``open_baked`` can open a baked graph built at run time (background baking).
    supports_baking = False

    def open_baked(self, model_bytes: bytes, label: str, source_path: Optional[str] = None) -> Callable[[np.ndarray], np.ndarray]:
        """A callable ``f(images) -> logits`` running a baked ONNX graph (serialized) built at
        run time by ``oat_edge.runtime.bake`` from path ``source_path``, with this runner's
        settings (that path's, where they differ per path)."""
        raise NotImplementedError(f"the {self.name} backend does not bake modes at run time")

    def bake_mode(self, baked, key, label: str, source_path: Optional[str] = None):
        """(run, bytes, info) serving baked graph ``baked`` (``oat_edge.runtime.bake.BakedGraph``)
        as cache entry ``key`` of background baking. By default a new session of the graph
        (``open_baked``); a backend that rewrites weights in place instead (TensorRT refit) names
        in ``info["replaces"]`` the entry whose storage it reused."""
        data = baked.to_bytes()
        return self.open_baked(data, label, source_path), len(data), {}

    def describe(self) -> Dict[str, object]:
        return {"backend": self.name, "device": self.device, "threads": self.threads, "paths": len(self.paths)}

    def close(self) -> None:
        """Release sessions/engines (the runner is unusable afterwards)."""

    @staticmethod
    def _check_film(spec: PathSpec, film: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if not spec.has_film:
            if film is not None:
                raise InputError(f"path {spec.id} is baked for one mode and takes no FiLM vector")
            return None
        if film is None:
            raise InputError(f"path {spec.id} needs its flat FiLM vector (size {spec.film_size})")
        film = np.ascontiguousarray(film, dtype=np.float32)
        if film.shape != (spec.film_size,):
            raise InputError(f"path {spec.id} needs a FiLM vector of shape [{spec.film_size}], got {list(film.shape)}")
        return film
