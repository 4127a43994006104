"""Validation of the images handed to ``Runtime.infer``: one clear InputError per problem.

Policy (the model normalises internally and expects float values in [0, 1]):
- numpy arrays and torch tensors (CPU tensors become numpy views without a copy; CUDA tensors
  stay on the GPU for GPU backends) of shape [batch, C, H, W] with the bundle's C, H, W and a
  batch inside the bundle's profile;
- float32 is used as is; float16/float64 are converted to float32 (one copy);
- integer and bool images are refused: uint8 0..255 pixels fed as-is are the classic range
  bug, so the caller must scale explicitly (``images.astype(np.float32) / 255``);
- NaN, ±inf and values outside [0, 1] are refused.
The check of the values is one pass (C++ ``in_unit_range`` or numpy min/max); only a failing
batch pays for the diagnosis that names what is wrong.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence, Tuple

import numpy as np

from oat_edge.errors import InputError

_CONVERTIBLE = (np.float16, np.float64)


def is_torch_tensor(x) -> bool:
    """True for torch tensors, without importing torch (it is only loaded if the caller has)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class InputChecker:
    def __init__(self, input_shape: Sequence[int], batch_min: int, batch_max: int,
                 in_unit_range: Callable[[np.ndarray], bool]):
        self.input_shape = tuple(int(v) for v in input_shape)
        self.batch_min, self.batch_max = int(batch_min), int(batch_max)
        self._in_unit_range = in_unit_range

    def check(self, images, accepts_cuda: bool):
        """(validated images, on CUDA?, the torch device a CPU tensor's logits go back to or None):
        numpy arrays and CPU tensors as float32 arrays; CUDA tensors as they are when the backend
        ``accepts_cuda``, else through the host."""
        if isinstance(images, np.ndarray):
            return self.numpy(images), False, None
        if is_torch_tensor(images):
            if images.device.type == "cuda" and accepts_cuda:
                return self.torch_cuda(images), True, None
            return self.torch_cpu(images), False, images.device
        return self.numpy(images), False, None  # raises the type error

    # --- numpy --------------------------------------------------------------------------------
    def numpy(self, images) -> np.ndarray:
        """A validated C-contiguous float32 [batch, C, H, W] array (a view when possible)."""
        if not isinstance(images, np.ndarray):
            raise InputError(
                f"images must be a numpy array or a torch tensor of shape [batch, {self._chw()}], "
                f"got {type(images).__name__}"
            )
        x = self._dtype(images, images.dtype)
        self._shape(x.shape)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        if not self._in_unit_range(x):
            self._diagnose_numpy(x)
        return x

    def _dtype(self, images: np.ndarray, dtype) -> np.ndarray:
        if dtype == np.float32:
            return images
        if dtype in _CONVERTIBLE:
            return images.astype(np.float32)
        raise InputError(self._dtype_message(str(dtype), np.issubdtype(dtype, np.integer) or dtype == np.bool_))

    def _dtype_message(self, dtype: str, integer_like: bool) -> str:
        msg = f"images must be float32 (float16/float64 are converted), got dtype {dtype}"
        if integer_like:
            msg += ("; integer pixels are not scaled automatically — pass "
                    "images.astype(np.float32) / 255 for 0..255 data (the model expects values in [0, 1])")
        return msg

    def _shape(self, shape: Tuple[int, ...]) -> None:
        if len(shape) == 3 and tuple(shape) == self.input_shape:
            raise InputError(f"images must be a batch [batch, {self._chw()}]; got one image of shape "
                             f"{list(shape)}: pass images[None] for a batch of 1")
        if len(shape) != 4 or tuple(shape[1:]) != self.input_shape:
            raise InputError(f"images must have shape [batch, {self._chw()}], got {list(shape)}")
        if not self.batch_min <= shape[0] <= self.batch_max:
            raise InputError(f"batch size {shape[0]} is outside this bundle's batch range "
                             f"{self.batch_min}..{self.batch_max}; split the batch (or re-export with a "
                             "larger --batch)")

    def _diagnose_numpy(self, x: np.ndarray) -> None:
        nan = int(np.isnan(x).sum())
        inf = int(np.isinf(x).sum())
        finite = x[np.isfinite(x)]
        lo = float(finite.min()) if finite.size else float("nan")
        hi = float(finite.max()) if finite.size else float("nan")
        self._raise_values(nan, inf, lo, hi)

    def _raise_values(self, nan: int, inf: int, lo: float, hi: float) -> None:
        if nan:
            raise InputError(f"images contain {nan} NaN value(s)")
        if inf:
            raise InputError(f"images contain {inf} infinite value(s)")
        msg = f"image values must be in [0, 1] (the model normalises internally), got range [{lo:.9g}, {hi:.9g}]"
        if lo >= -1e-3 and hi <= 1.0 + 1e-3:
            msg += "; just outside [0, 1] (rounding from resizing or scaling?): np.clip(images, 0, 1)"
        elif hi >= 2.0 and hi <= 255.0 and lo >= 0.0:
            msg += "; 0..255 pixel values? divide by 255"
        elif lo < 0.0:
            msg += "; already normalised (mean/std)? pass the raw [0, 1] images"
        raise InputError(msg)

    # --- torch ----------------------------------------------------------------------------------
    def torch_cpu(self, images) -> np.ndarray:
        """A CPU tensor as a validated numpy array (a view of the tensor's memory when it is
        float32 and contiguous)."""
        images = images.detach()
        if images.device.type == "meta":
            raise InputError("images are a meta tensor (a shape without data); pass real images")
        if images.device.type != "cpu":
            images = images.cpu()
        try:
            array = images.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks
            raise InputError(self._dtype_message(str(images.dtype), False)) from None
        return self.numpy(array)

    def torch_cuda(self, images):
        """A CUDA tensor validated on the GPU (one reduction kernel), float32 and contiguous."""
        import torch

        x = images.detach()
        if x.dtype != torch.float32:
            if x.dtype in (torch.float16, torch.float64, torch.bfloat16):
                x = x.float()
            else:
                integer = not x.dtype.is_floating_point and not x.dtype.is_complex
                raise InputError(self._dtype_message(str(x.dtype), integer))
        self._shape(tuple(x.shape))
        if not x.is_contiguous():
            x = x.contiguous()
        lo, hi = torch.aminmax(x)
        lo, hi = float(lo), float(hi)
        if not (lo >= 0.0 and hi <= 1.0):
            nan = int(torch.isnan(x).sum())
            inf = int(torch.isinf(x).sum())
            fin = x[torch.isfinite(x)]
            self._raise_values(nan, inf, float(fin.min()) if fin.numel() else float("nan"),
                               float(fin.max()) if fin.numel() else float("nan"))
        return x

    def _chw(self) -> str:
        return ", ".join(str(v) for v in self.input_shape)
