"""FiLM tables (``film.npz``, docs/bundle.md): γ/β of every FiLM site on a λ grid per width,
plus the generator weights, so any λ — on the grid or not — gets its exact flat FiLM vector
with numpy alone.

numpy only: ``film_vector`` is the reference the runtime's FiLM computer matches, and what
``verify`` feeds the BN paths. The export stage fills the tables from a torch model
(``oat_edge.export.film_tables.build_film_tables``) and writes them with ``save_film_tables``.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence, Union

import numpy as np

from oat_edge.bundle.safe_files import load_npz
from oat_edge.errors import BundleError, ModeError
from oat_edge.lambda_code import DEFAULT_ENCODING, check_encoding, encode_lambdas, slerp_angle
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
    unreadable. Read without ``np.load`` (``oat_edge.bundle.safe_files.load_npz``): no pickles, capped
    ``.npy`` headers, and no allocation larger than the file holds."""
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


def film_array(arrays: Mapping[str, np.ndarray], key: str, dtype, ndim: int, file) -> np.ndarray:
    """``arrays[key]`` as a C-contiguous array of this dtype and rank, all values finite
    (integers aside); BundleError otherwise."""
    if key not in arrays:
        raise BundleError(f"{file} lacks the array {key!r} (see docs/bundle.md)")
    a = arrays[key]
    if a.dtype != dtype or a.ndim != ndim:
        raise BundleError(f"{file}: {key} must be {np.dtype(dtype).name} with {ndim} dimension(s), "
                          f"got {a.dtype} {list(a.shape)}")
    if dtype != np.int64 and not np.all(np.isfinite(a)):
        raise BundleError(f"{file}: {key} holds NaN or infinite values")
    return np.ascontiguousarray(a)


# Off-grid FiLM vectors are computed in float32; a generator whose worst case stays below this
# (a sixteenth of float32's largest value: room for rounding) can never give inf or NaN.
FILM_VALUE_LIMIT = float(np.finfo(np.float32).max) / 16


def _code_bound(code_rows: np.ndarray, encoding: str) -> np.ndarray:
    """The largest |λ code| per dimension over every λ in [0, 1] (float64)."""
    if encoding == "scalar":
        return np.ones(1)  # the code is λ
    rows = np.abs(code_rows.astype(np.float64))
    bound = rows.max(axis=0)  # a linear blend stays within the rows' box
    if encoding == "ro-slerp":
        for i in range(len(rows) - 1):
            omega = slerp_angle(code_rows[i], code_rows[i + 1])
            if math.sin(omega) >= 1e-12:  # an arc (slerp_weights): weights ≥ 0, summing to ≤ 1/cos(Ω/2)
                bound = np.maximum(bound, np.maximum(rows[i], rows[i + 1]) / math.cos(omega / 2))
    return bound


def _site_bound(w1, b1, w2, b2, code_bound: np.ndarray, slope: float) -> float:
    """The largest |value| a site's two-layer leaky-ReLU generator can output (or hold in its
    hidden layer) for codes within ``code_bound``; inf when that overflows float64."""
    gain = max(1.0, abs(slope))
    with np.errstate(over="ignore", invalid="ignore"):
        hidden = gain * (np.abs(w1.astype(np.float64)) @ code_bound + np.abs(b1.astype(np.float64)))
        out = gain * (np.abs(w2.astype(np.float64)) @ hidden + np.abs(b2.astype(np.float64)))
        worst = max(float(hidden.max(initial=0.0)), float(out.max(initial=0.0)))
    return worst if math.isfinite(worst) else math.inf


def check_film_file(arrays: Mapping[str, np.ndarray], file, widths: Sequence[float], sizes: Mapping[float, int],
                    negative_slope: float | None = None) -> None:
    """Everything a runtime checks when it loads film.npz (``sizes``: FiLM size per width, a
    width missing from it takes its table's; ``negative_slope``: the manifest's, else the
    file's), without building anything: the runtime calls it, and so does ``sign``, which must
    never sign a bundle a runtime refuses. Besides shapes and finite values, every generator
    must stay finite in float32 for every λ, so an off-grid FiLM vector is never inf or NaN.
    BundleError if not."""
    slope = arrays.get("negative_slope")
    if slope is not None and (slope.shape != () or slope.dtype != np.float64 or not np.isfinite(slope)):
        raise BundleError(f"{file}: negative_slope must be a finite float64 scalar")
    if negative_slope is None:
        negative_slope = float(slope) if slope is not None else 0.0
    grid = film_array(arrays, "lambda_grid", np.float64, 1, file)
    train = film_array(arrays, "train_lambdas", np.float64, 1, file)
    code_rows = film_array(arrays, "code_rows", np.float32, 2, file)
    if code_rows.shape[0] != train.shape[0]:
        raise BundleError(f"{file}: code_rows has {code_rows.shape[0]} rows for {train.shape[0]} training λ values")
    if grid.size == 0 or np.any(np.diff(grid) <= 0) or grid[0] < 0 or grid[-1] > 1:
        raise BundleError(f"{file}: lambda_grid must be sorted, unique and within [0, 1]")
    if np.any(np.diff(train) <= 0):
        raise BundleError(f"{file}: train_lambdas must be sorted and unique")
    code_bound = _code_bound(code_rows, tables_encoding(arrays))
    for w in widths:
        tag = fmt_width(w)
        table = film_array(arrays, f"table_w{tag}", np.float32, 2, file)
        sites = film_array(arrays, f"sites_w{tag}", np.int64, 2, file)
        size = int(sizes.get(w, table.shape[1]))
        if table.shape != (grid.size, size):
            raise BundleError(f"{file}: table_w{tag} has shape {list(table.shape)}, expected "
                              f"[{grid.size}, {size}] (grid × FiLM size of width {tag})")
        if sites.shape[1:] != (2,):
            raise BundleError(f"{file}: sites_w{tag} does not describe a FiLM vector of size {size}")
        total = 0
        for k, (off, ch) in enumerate(sites.tolist()):  # Python ints: no overflow
            if off < 0 or ch <= 0 or off + 2 * ch > size:
                raise BundleError(f"{file}: site {k} of width {tag} lies outside the FiLM vector of size {size}")
            total += 2 * ch
            w1, b1, w2, b2 = (film_array(arrays, f"{name}_w{tag}_s{k}", np.float32, ndim, file) for name, ndim in
                              (("fc1_weight", 2), ("fc1_bias", 1), ("fc2_weight", 2), ("fc2_bias", 1)))
            c2 = 2 * ch
            if w1.shape != (c2, code_bound.size) or b1.shape != (c2,) or w2.shape != (c2, c2) or b2.shape != (c2,):
                raise BundleError(f"{file}: generator shapes of site {k} of width {tag} do not match its channels")
            if _site_bound(w1, b1, w2, b2, code_bound, negative_slope) > FILM_VALUE_LIMIT:
                raise BundleError(f"{file}: the FiLM generator of site {k} of width {tag} has weights so large that "
                                  "its output overflows float32 (inf or NaN) for some λ; re-export the bundle")
        if total != size:
            raise BundleError(f"{file}: sites_w{tag} does not describe a FiLM vector of size {size}")
