"""The raw-pixel → model-input transform, numpy only (no torch, no Pillow, no OpenCV).

One function, ``apply_preprocessing(frame, contract)``, is used by both sides of a deployment:
the training stage runs it on every decoded image of a ``folder:`` / ``npz:`` dataset, and
``Runtime.infer_frames`` runs it on camera frames. Using the same code on both sides is what
makes the parity check (training tensors vs infer_frames logits) exact.

The contract is a plain dict (stored in the bundle manifest as ``preprocessing``; docs/bundle.md
is the normative text for clients in other languages):

    source_dtype   "uint8" or "float32"          what the raw pixels are
    source_range   [lo, hi]                       their nominal range (uint8: [0, 255])
    color          "rgb" or "grey"                channel order the model was trained on
    grey_weights   [0.299, 0.587, 0.114]          R, G, B weights when a colour frame feeds a grey model
    layout         "NCHW"                         the model input's layout
    resize         null or {"size": S, "mode": "shorter_side", "interpolation": "triangle_antialias"}
    crop           null or {"size": [H, W], "mode": "center"}
    scale          multiplier applied after resize/crop (uint8: 1/255, digits: 1/16)
    mean, std      per-channel normalisation, applied INSIDE the model (recorded, not applied here)

Resizing (``triangle_antialias``) is separable. Along one axis with ``n_in`` input and
``n_out`` output samples, ``s = n_in / n_out`` and ``support = max(s, 1)``; output sample ``i``
is centred at ``c = (i + 0.5) * s`` and is ``Σ_j w_ij x_j / Σ_j w_ij`` over input samples ``j``
with ``w_ij = max(0, 1 - |j + 0.5 - c| / support)``. Upscaling is plain bilinear interpolation
with half-pixel centres and edge clamping; downscaling widens the triangle so every input pixel
contributes (no aliasing from a camera's 640×480 frame). The arithmetic is float32.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from oat_edge.errors import InputError

MAX_FRAME_PIXELS = 1 << 26  # a frame, and the frame resized: 64 Mi pixels (a 256-to-1 aspect ratio at 512 pixels)
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as Pillow's convert("L")
INTERPOLATION = "triangle_antialias"

# What a manifest without a "preprocessing" field means (bundles exported before it existed):
# float32 [0, 1] images, already at the model's size, fed as they are.
LEGACY_CONTRACT: Dict[str, Any] = {
    "source_dtype": "float32", "source_range": [0.0, 1.0], "color": "rgb", "grey_weights": list(GREY_WEIGHTS),
    "layout": "NCHW", "resize": None, "crop": None, "scale": 1.0, "mean": None, "std": None,
    "class_names": None,
}


def make_contract(*, channels: int, image_hw: Sequence[int], source_dtype: str = "uint8",
                  source_range: Optional[Sequence[float]] = None, resize: Optional[int] = None,
                  scale: Optional[float] = None, mean=None, std=None, class_names=None,
                  note: Optional[str] = None) -> Dict[str, Any]:
    """A contract for a model of ``channels`` × ``image_hw`` input. ``resize=S`` means: shorter
    side to S, then centre crop to ``image_hw``; ``None`` means frames must already have that size."""
    if source_range is None:
        source_range = [0.0, 255.0] if source_dtype == "uint8" else [0.0, 1.0]
    if scale is None:
        scale = 1.0 / (float(source_range[1]) - float(source_range[0])) if source_range[1] != source_range[0] else 1.0
    h, w = (int(v) for v in image_hw)
    contract = {
        "source_dtype": source_dtype, "source_range": [float(v) for v in source_range],
        "color": "grey" if int(channels) == 1 else "rgb", "grey_weights": list(GREY_WEIGHTS),
        "layout": "NCHW",
        "resize": None if resize is None else {"size": int(resize), "mode": "shorter_side", "interpolation": INTERPOLATION},
        "crop": None if resize is None else {"size": [h, w], "mode": "center"},
        "scale": float(scale),
        "mean": None if mean is None else [float(v) for v in mean],
        "std": None if std is None else [float(v) for v in std],
        "class_names": None if class_names is None else [str(c) for c in class_names],
    }
    if note:
        contract["note"] = note
    return contract


def with_defaults(contract: Optional[Dict[str, Any]], channels: Optional[int] = None) -> Dict[str, Any]:
    """The contract with every missing (or null) field set to the documented default
    (LEGACY_CONTRACT; the colour follows the model's channels: 1 → grey, 3 → rgb)."""
    out = dict(LEGACY_CONTRACT)
    if channels is not None:
        out["color"] = "grey" if int(channels) == 1 else "rgb"
    out.update({k: v for k, v in (contract or {}).items() if v is not None or k in ("resize", "crop")})
    return out


@functools.lru_cache(maxsize=64)  # a camera's frames all have one size
def resize_taps(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray]:
    """One resize axis (see the module docstring) as K taps per output sample: int64 indices
    and float32 weights, each [n_out, K] with K = ceil(2·support) + 2, so memory grows with
    n_in + n_out, never with their product; read-only."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    first = np.floor(centres - support - 0.5).astype(np.int64)  # taps with non-zero weight start after it
    idx = first[:, None] + np.arange(int(math.ceil(2 * support)) + 2, dtype=np.int64)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs(idx + 0.5 - centres[:, None]) / support)
    w[(idx < 0) | (idx >= n_in)] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    idx = np.clip(idx, 0, n_in - 1)
    w = w.astype(np.float32)
    idx.flags.writeable = w.flags.writeable = False
    return idx, w


def resized_hw(h: int, w: int, size: int) -> Tuple[int, int]:
    """Shorter side to ``size``, the longer one scaled alike (round half up, at least ``size``)."""
    short = min(h, w)
    if h <= w:
        return size, max(size, int(math.floor(w * size / short + 0.5)))
    return max(size, int(math.floor(h * size / short + 0.5))), size


_BLAS = None


def _one_blas_thread():
    """A context that keeps BLAS on one thread: the two matrix products of a frame are small, and
    on a machine whose cores are busy (a robot's) BLAS threads waiting for each other cost far
    more than they save. Uses threadpoolctl when installed."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except Exception:  # not installed (or no BLAS found): numpy's own threading
            _BLAS = False
    if _BLAS is False:
        import contextlib

        return contextlib.nullcontext()
    return _BLAS.limit(limits=1, user_api="blas")


def resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """float32 [H, W, C] -> float32 [out_h, out_w, C] (identity when the size is unchanged)."""
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        return image
    with _one_blas_thread():
        return _resize(image, h, w, out_h, out_w)


def _resize_axis0(x: np.ndarray, n_out: int) -> np.ndarray:
    idx, w = resize_taps(x.shape[0], n_out)
    out = np.zeros((n_out,) + x.shape[1:], np.float32)
    for k in range(idx.shape[1]):
        out += w[:, k, None, None] * x[idx[:, k]]
    return out


def _resize(image, h, w, out_h, out_w):
    x = image
    if h != out_h:
        x = _resize_axis0(x, out_h)  # [out_h, W, C]
    if w != out_w:
        x = _resize_axis0(x.transpose(1, 0, 2), out_w).transpose(1, 0, 2)  # [out_h, out_w, C]
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_hwc(frame: np.ndarray) -> np.ndarray:
    x = frame[:, :, None] if frame.ndim == 2 else frame
    if x.ndim != 3 or x.shape[2] not in (1, 3):
        raise InputError(f"a frame must be [H, W], [H, W, 1] or [H, W, 3], got shape {list(frame.shape)}")
    return x


def to_model_channels(x: np.ndarray, contract: Dict[str, Any], color: str = "rgb") -> np.ndarray:
    """float32 [H, W, 1|3] (``color`` = the frame's channel order, "rgb" or "bgr") -> float32
    [H, W, C] in the model's channel order (RGB, or grey by the BT.601 weights)."""
    if color not in ("rgb", "bgr"):
        raise InputError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if x.shape[2] == 3 and color == "bgr":
        x = x[:, :, ::-1]
    if contract.get("color") == "grey":
        if x.shape[2] == 3:
            wr, wg, wb = (np.float32(v) for v in contract.get("grey_weights") or GREY_WEIGHTS)
            x = (x[:, :, 0] * wr + x[:, :, 1] * wg + x[:, :, 2] * wb)[:, :, None]
    elif x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return np.ascontiguousarray(x, dtype=np.float32)


def apply_preprocessing(frame: np.ndarray, contract: Dict[str, Any], input_hw: Sequence[int],
                        color: str = "rgb") -> np.ndarray:
    """One raw frame -> float32 [C, H, W] model input (before the in-model mean/std).

    Order: float32, resize, crop, channels, scale. Resizing acts on each channel alone and the
    channel step is linear, so resizing first (few output pixels to reorder or mix) gives the
    same values as the documented order up to float rounding."""
    c = contract if "color" in contract else with_defaults(contract)
    h, w = (int(v) for v in input_hw)
    fh, fw = int(frame.shape[0]), int(frame.shape[1])
    # Sizes are checked before anything is allocated.
    if not c.get("resize") and (fh, fw) != (h, w):
        raise InputError(f"a frame of {fh}×{fw} pixels does not fit this model's "
                         f"{h}×{w} input and its preprocessing has no resize step; resize the frame to {h}×{w}")
    if fh * fw > MAX_FRAME_PIXELS:
        raise InputError(f"a frame of {fh}×{fw} pixels is larger than {MAX_FRAME_PIXELS} pixels; scale it down first")
    if c.get("resize"):
        size = int(c["resize"]["size"])
        rh, rw = resized_hw(fh, fw, size)
        if rh * rw > MAX_FRAME_PIXELS:
            raise InputError(f"a frame of {fh}×{fw} pixels resized to {rh}×{rw} would exceed {MAX_FRAME_PIXELS} "
                             "pixels; its aspect ratio is too extreme for this model's preprocessing")
    x = _as_hwc(frame).astype(np.float32)
    if c.get("resize"):
        x = resize(x, rh, rw)
        ch, cw = (int(v) for v in (c.get("crop") or {}).get("size", [h, w]))
        top, left = (x.shape[0] - ch) // 2, (x.shape[1] - cw) // 2
        x = x[top: top + ch, left: left + cw]
    if x.shape[:2] != (h, w):
        raise InputError(f"a frame of {frame.shape[0]}×{frame.shape[1]} pixels does not fit this model's "
                         f"{h}×{w} input and its preprocessing has no resize step; resize the frame to {h}×{w}")
    x = to_model_channels(x, c, color) * np.float32(c.get("scale", 1.0))
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def check_frame_dtype(frame, contract: Dict[str, Any]) -> np.ndarray:
    """The frame as a numpy array of a dtype the contract accepts; InputError otherwise."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"a frame must be a numpy array (uint8 [H, W, 3] from a camera), got {type(frame).__name__}")
    want = contract.get("source_dtype", "float32")
    if want == "uint8" and frame.dtype != np.uint8:
        raise InputError(f"this bundle expects uint8 frames (0..255), got dtype {frame.dtype}")
    if want != "uint8" and not (np.issubdtype(frame.dtype, np.floating) or np.issubdtype(frame.dtype, np.integer)):
        raise InputError(f"frames must be numeric, got dtype {frame.dtype}")
    if frame.ndim not in (2, 3) or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"a frame must be [H, W], [H, W, 1] or [H, W, 3], got shape {list(frame.shape)}")
    return frame


def frames_list(frames) -> List[np.ndarray]:
    """One frame or a list/tuple of frames (or a 4-D uint8 stack [N, H, W, C]) as a list."""
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise InputError("no frames given")
        return list(frames)
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        if frames.shape[0] == 0:
            raise InputError("no frames given (an empty stack)")
        return list(frames)
    return [frames]


def preprocess_frames(frames, contract: Dict[str, Any], input_hw: Sequence[int], color: str = "bgr") -> np.ndarray:
    """Camera frames -> the float32 [N, C, H, W] batch a model takes, by ``contract`` (with its
    defaults filled in). ``frames``: one frame or a list of frames, each [H, W, 3] (``color``
    "bgr" as OpenCV delivers, or "rgb"), [H, W, 1] or [H, W]; InputError for a frame the contract
    does not accept, or one whose values fall outside [0, 1] once scaled."""
    batch = [apply_preprocessing(check_frame_dtype(f, contract), contract, input_hw, color) for f in frames_list(frames)]
    x = np.stack(batch)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:  # only from frames outside the contract's source range
        raise InputError(f"frames map to values in [{lo:.4g}, {hi:.4g}], outside [0, 1]: this bundle expects raw "
                         f"values in {contract.get('source_range')} (scale {contract.get('scale'):.6g})")
    return x
