"""Shared pieces of the hardening tests: one exported bundle per test process
(resnet_tiny, widths 0.5/0.75/1, baked λ 0 and 0.3), copies to tamper with, and a forger's
``rehash`` that rewrites every sha256 in the manifest the way an attacker could."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

BAKE = (0.0, 0.3)


@functools.lru_cache(maxsize=None)
def _workdir() -> Path:
    import atexit

    path = Path(tempfile.mkdtemp(prefix="oat-edge-hardening-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.lru_cache(maxsize=None)
def checkpoint() -> Path:
    from export_helpers import make_checkpoint

    return make_checkpoint(_workdir() / "tiny.pt")


@functools.lru_cache(maxsize=None)
def bundle() -> Path:
    from oat_edge.export import export_bundle

    return export_bundle(checkpoint(), _workdir() / "bundle", bake=BAKE, batch=(1, 4, 16), tensorrt="off",
                         progress=False, parity_images=16)


def copy_bundle(tmp_path: Path, name: str = "bundle") -> Path:
    dst = tmp_path / name
    shutil.copytree(bundle(), dst)
    return dst


def read_manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def write_manifest(b: Path, m: dict) -> None:
    (b / "manifest.json").write_text(json.dumps(m, indent=2))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehash(b: Path) -> dict:
    """What an attacker does after changing files: recompute every sha256 in the manifest."""
    m = read_manifest(b)
    for e in m["paths"] + (m.get("baked") or []):
        e["sha256"] = sha(b / e["file"])
        for x in e.get("external_data") or []:
            x["sha256"] = sha(b / x["file"])
    for key in ("film", "parity_reference"):
        if m.get(key):
            m[key]["sha256"] = sha(b / m[key]["file"])
    write_manifest(b, m)
    return m


def load_npz_plain(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_npz_plain(path: Path, arrays: dict) -> None:
    from oat_edge.bundle.film import write_npz

    write_npz(path, arrays)


def images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)
