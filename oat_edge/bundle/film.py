"""FiLM tables (``film.npz``, docs/bundle.md): γ/β of every FiLM site on a λ grid per width,
plus the generator weights, so any λ — on the grid or not — gets its exact flat FiLM vector
with numpy alone.

numpy only: ``film_vector`` is the reference the runtime's FiLM computer matches, and what
``verify`` feeds the BN paths. The export stage fills the tables from a torch model
(``oat_edge.export.film_tables.build_film_tables``) and writes them with ``save_film_tables``.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence, Union

import numpy as np

from oat_edge.errors import BundleError, ModeError
from oat_edge.lambda_code import DEFAULT_ENCODING, check_encoding, encode_lambdas
from oat_edge.mode import LAMBDA_TOL, check_lambda, fmt_width, same_width

GRID_TOL = LAMBDA_TOL  # λ within this of a grid value takes that row
DEFAULT_GRID_STEP = 0.05
ENCODING_KEY = "lambda_encoding"  # film.npz entry (a 0-d string), present only when not "ro"


def tables_encoding(tables: Mapping[str, np.ndarray]) -> str:
    """The λ encoding the tables were built with; "ro" for tables without the entry (every
    bundle exported before encodings existed). BundleError if the entry is not a known name."""
    if ENCODING_KEY not in tables:
        return DEFAULT_ENCODING
    value = np.asarray(tables[ENCODING_KEY])
    if value.shape != () or value.dtype.kind != "U":
        raise BundleError(f"film.npz: {ENCODING_KEY} must be a 0-d string, got {value.dtype} {list(value.shape)}")
    try:
        return check_encoding(str(value))
    except Exception as e:  # ConfigError from check_encoding: a bundle problem here
        raise BundleError(f"film.npz: {e}") from None


def default_lambda_grid(train_lambdas: Sequence[float], step: float = DEFAULT_GRID_STEP) -> list[float]:
    """0, step, …, 1 together with every training λ (sorted, duplicates within 1e-9 merged)."""
    n = int(round(1.0 / step))
    values = [round(i * step, 10) for i in range(n + 1)] + [float(x) for x in train_lambdas]
    return merge_grid(values)


def merge_grid(values) -> list[float]:
    out: list[float] = []
    for v in sorted(check_lambda(x) for x in values):
        if not out or v - out[-1] > GRID_TOL:
            out.append(v)
    return out


def write_npz(path: Union[str, os.PathLike], arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` that ``np.load(allow_pickle=False)`` reads, written byte-for-byte
    reproducibly: ``np.savez`` stamps each entry with the current time, which would make two
    exports of the same checkpoint differ. Entries are stored (not deflated), in sorted key
    order, with a fixed timestamp; object arrays are refused."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            value = np.asarray(arrays[key])
            if not value.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
                value = value.copy(order="C")
            if value.dtype.hasobject:
                raise BundleError(f"{key}: object arrays cannot go into a bundle")
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, value, allow_pickle=False)


def save_film_tables(path: Union[str, os.PathLike], tables: Mapping[str, np.ndarray]) -> None:
    write_npz(path, tables)


def load_film_tables(path: Union[str, os.PathLike, bytes], name: str = "") -> dict[str, np.ndarray]:
    """All arrays of a ``film.npz`` (a path, or its bytes named ``name``); BundleError if
    unreadable. Read without ``np.load`` (``oat_edge.safe_files.load_npz``): no pickles, capped
    ``.npy`` headers, and no allocation larger than the file holds."""
    from oat_edge.safe_files import load_npz

    return load_npz(path, f"{name or path} (FiLM tables)")


def _width_key(tables: Mapping[str, np.ndarray], width) -> str:
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise ModeError(f"width must be a number, got {width!r}") from None
    widths = [float(w) for w in np.asarray(tables["widths"]).reshape(-1)] if "widths" in tables else None
    if widths is None:  # tables without the optional index: find the width from the keys
        widths = [float(k[len("table_w"):]) for k in tables if k.startswith("table_w")]
    for w in widths:
        if same_width(w, value):
            return fmt_width(w)
    raise ModeError(f"width {width!r} is not in the FiLM tables; widths: {', '.join(fmt_width(w) for w in sorted(widths))}")


def _leaky(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, slope * x)


def film_vector(tables: Mapping[str, np.ndarray], lam, width, negative_slope: float | None = None) -> np.ndarray:
    """The flat FiLM vector (float32 [F]) of (λ, width), numpy only.

    On the grid (|λ − g| ≤ 1e-9) it is the stored row; otherwise the λ code is interpolated
    between the neighbouring training codes and run through each site's two-layer generator
    (docs/bundle.md) — the code under the tables' λ encoding (``tables_encoding``).
    ``tables``: a dict or an open ``np.load`` of film.npz.
    """
    lam = check_lambda(lam)
    key = _width_key(tables, width)
    grid = np.asarray(tables["lambda_grid"], dtype=np.float64)
    hit = np.nonzero(np.abs(grid - lam) <= GRID_TOL)[0]
    if hit.size:
        return np.asarray(tables[f"table_w{key}"][hit[0]], dtype=np.float32)
    if negative_slope is None:
        negative_slope = float(tables["negative_slope"])
    code = encode_lambdas([lam], np.asarray(tables["train_lambdas"]), np.asarray(tables["code_rows"]),
                          tables_encoding(tables))[0]
    code = code.astype(np.float64)
    sites = np.asarray(tables[f"sites_w{key}"]).reshape(-1, 2)
    out = np.empty(int(2 * sites[:, 1].sum()) if len(sites) else 0, dtype=np.float32)
    for k, (off, channels) in enumerate(sites):
        w1 = np.asarray(tables[f"fc1_weight_w{key}_s{k}"], dtype=np.float64)
        b1 = np.asarray(tables[f"fc1_bias_w{key}_s{k}"], dtype=np.float64)
        w2 = np.asarray(tables[f"fc2_weight_w{key}_s{k}"], dtype=np.float64)
        b2 = np.asarray(tables[f"fc2_bias_w{key}_s{k}"], dtype=np.float64)
        z = _leaky(w1 @ code + b1, negative_slope)
        out[off : off + 2 * channels] = _leaky(w2 @ z + b2, negative_slope)
    return out


def check_film_tables(tables: Mapping[str, np.ndarray], widths: Sequence[float], sizes: Mapping[str, int]) -> None:
    """Shape/key consistency of loaded tables against the manifest; BundleError if not."""
    required = ("lambda_grid", "train_lambdas", "code_rows", "negative_slope")
    missing = [k for k in required if k not in tables]
    for w in widths:
        key = fmt_width(w)
        for k in (f"table_w{key}", f"sites_w{key}"):
            if k not in tables:
                missing.append(k)
    if missing:
        raise BundleError(f"film.npz lacks {missing}; re-export the bundle")
    tables_encoding(tables)
    grid = np.asarray(tables["lambda_grid"])
    for w in widths:
        key = fmt_width(w)
        table, sites = tables[f"table_w{key}"], np.asarray(tables[f"sites_w{key}"]).reshape(-1, 2)
        size = int(sizes.get(key, -1))
        if table.shape != (grid.shape[0], size) or int(2 * sites[:, 1].sum()) != size:
            raise BundleError(
                f"film.npz table for width {key} has shape {table.shape}, expected ({grid.shape[0]}, {size})"
            )
        for k in range(len(sites)):
            if f"fc2_bias_w{key}_s{k}" not in tables or f"fc1_weight_w{key}_s{k}" not in tables:
                raise BundleError(f"film.npz lacks the generator of site {k} at width {key}")
