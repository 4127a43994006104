"""Reduced-precision copies of exported graphs (``oat-edge export --precision fp16 int8``).

Every fp32 file (BN path or baked path) that passed the parity gate gets one derived file per
extra precision, made from that fp32 ONNX graph:

- fp16: float16 weights and compute, float32 inputs and outputs (``convert_to_fp16``, the graph
  the TensorRT 11 fp16 engines are built from), so the runtime feeds it like any other path;
- int8: explicit quantization, a QDQ graph from onnxruntime's ``quantize_static``: weights
  int8 symmetric per output channel, activations per tensor, ranges by MinMax calibration on
  held-out images. The format follows the target that runs the file:

  ==========  ===========================  ==========================================
  format      activations                  for
  ==========  ===========================  ==========================================
  ``U8S8``    uint8 asymmetric (zero pt)   onnxruntime / CPU: its x86 kernels' fast form
  ``S8S8``    int8 symmetric, zero point 0 TensorRT explicit quantization
  ==========  ===========================  ==========================================

  ``int8_activations="auto"`` (default) writes S8S8 when the export builds TensorRT engines
  (the TensorRT target is wanted) and U8S8 otherwise: onnxruntime runs S8S8 QDQ slower than
  fp32 on x86 (benchmarks/results/precision.md). ``"s8"`` / ``"u8"`` force one. A BN path is
  calibrated with FiLM vectors of its training λ (cycled over the batches), a baked path at
  its own λ. The manifest's ``precisions.int8.int8_format`` records the format.

Each derived file goes through the parity gate against the fp32 PyTorch model with its own
bar (``TOLERANCES``, recorded in the manifest).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from oat_edge.errors import BundleError, ConfigError, DependencyError

# The parity bar per precision: max |Δlogit| at most ``max_rel_diff`` × the largest |logit| of
# the fp32 reference, and top-1 agreement at least ``top1_min`` on the images the fp32 model
# classifies decisively (top-1 margin ≥ ``decisive_margin`` × that largest |logit|): a near tie
# may flip under any rounding, a clear decision must not. fp32 keeps export.parity's absolute
# 1e-4 and 100 %. The agreement over all images is recorded too (the figure a 99 % goal reads).
TOLERANCES = {
    "fp16": {"top1_min": 0.99, "max_rel_diff": 0.01, "decisive_margin": 0.05},
    "int8": {"top1_min": 0.95, "max_rel_diff": 0.25, "decisive_margin": 0.05},
}
# Default calibration images for int8. onnxruntime's MinMax calibrator holds every intermediate
# output of every calibration image until it computes the ranges, so the default stays modest;
# small models gain from more (near-tie images stop flipping). Its bounded-memory option
# (CalibMaxIntermediateOutputs) is not used: in onnxruntime 1.32 its merged ranges break the
# int8 files, and it raises "No data is collected" when the batch count is a multiple of it.
QUANT_IMAGES = 256
INT8_ACTIVATIONS = ("auto", "s8", "u8")  # see the module docstring
INT8_FORMATS = {"s8": "S8S8", "u8": "U8S8"}  # activations -> the manifest's int8_format
QUANT_BATCH = 32


def calibration_images(dataset: Optional[dict], input_shape: Sequence[int], n: int, data_dir=None) -> Tuple[np.ndarray, str]:
    """Images for int8 range calibration: the last ``n`` of the ``val`` split where the dataset
    has one (held out of training), else of the training split (digits has no val split; the
    parity gate and --calibrate use test images, so calibration never sees those). Seeded
    uniform noise when the dataset cannot be loaded here, said so in the source text."""
    if int(n) < 1:
        raise ConfigError(f"quant_images must be ≥ 1, got {n}")
    name = (dataset or {}).get("name")
    if name:
        try:
            from oat_edge.training.datasets import dataset_info, load_dataset

            split = "val" if "val" in dataset_info(name)["splits"] else "train"
            ds = load_dataset(name, split, data_dir)
            x = ds.tensors[0][-int(n):].numpy().astype(np.float32)
            if list(x.shape[1:]) == [int(v) for v in input_shape] and x.shape[0] > 0:
                return np.ascontiguousarray(x), f"{name}:{split}[-{x.shape[0]}:]"
        except (ImportError, ConfigError):
            pass
    rng = np.random.Generator(np.random.PCG64(1))
    return (rng.random((int(n), *[int(v) for v in input_shape]), dtype=np.float32),
            f"uniform[0,1) PCG64(1) x{n} (dataset not available here: ranges are not representative)")


def calibration_feeds(images: np.ndarray, lams: Sequence[float], film_for: Optional[Callable]) -> List[Dict[str, np.ndarray]]:
    """Batches of ``images``, each with the FiLM vector of the next λ of ``lams`` (cycled), or
    images only (``film_for`` None: a baked path). Batches are at most QUANT_BATCH images and
    small enough that every λ gets at least one when there are as many images as λ: ranges
    calibrated on a few λ only would clip the activations of the others."""
    feeds = []
    n = images.shape[0]
    batch = QUANT_BATCH if film_for is None else max(1, min(QUANT_BATCH, n // max(len(lams), 1)))
    for k, s in enumerate(range(0, n, batch)):
        feed = {"images": images[s : s + batch]}
        if film_for is not None:
            feed["film"] = np.asarray(film_for(lams[k % len(lams)]), dtype=np.float32)
        feeds.append(feed)
    return feeds


def resolve_activations(activations: str, tensorrt_wanted: bool) -> str:
    """"s8" or "u8" for an ``int8_activations`` option: "auto" follows the target (module docstring)."""
    if activations not in INT8_ACTIVATIONS:
        raise ConfigError(f"int8_activations must be one of {INT8_ACTIVATIONS}, got {activations!r}")
    if activations == "auto":
        return "s8" if tensorrt_wanted else "u8"
    return activations


def describe(precision: str, quant: Optional[Dict[str, Any]] = None, activations: str = "s8") -> Dict[str, Any]:
    """The manifest's ``precisions[precision]`` record."""
    if precision == "fp16":
        return {"method": "float16 conversion of the fp32 graph (weights and compute in float16, "
                          "float32 inputs/outputs, Casts at the edges)", "parity_tolerance": TOLERANCES["fp16"]}
    if precision == "int8":
        return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                "weights": "int8 symmetric, per output channel",
                "activations": ("int8 symmetric, per tensor" if activations == "s8"
                                else "uint8 asymmetric (zero point), per tensor"),
                "activation_type": activations, "int8_format": INT8_FORMATS[activations],
                "tensorrt_explicit_quantization": activations == "s8",
                "calibration": dict(quant or {}, method="MinMax"), "parity_tolerance": TOLERANCES["int8"]}
    raise ConfigError(f"no derived files for precision {precision!r}")


def to_fp16(src: Path):
    import onnx

    from oat_edge.trt_engine_build import convert_to_fp16

    return convert_to_fp16(onnx.load(str(src)), keep_io_types=True)


@contextlib.contextmanager
def _quiet_quantizer():
    """quantize_static logs a pre-processing hint on every call (our graphs are already
    simplified and shape-inferred by the export)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def to_int8(src: Path, feeds: List[Dict[str, np.ndarray]], activations: str = "s8"):
    """The QDQ int8 ModelProto of the fp32 graph ``src`` calibrated on ``feeds``; ``activations``
    "s8" (symmetric int8) or "u8" (asymmetric uint8)."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
        )
    except ImportError:
        raise DependencyError("int8 export needs onnxruntime (its quantization tooling)") from None

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="oat-edge-int8-") as tmp:
        out = os.path.join(tmp, "int8.onnx")
        try:
            with _quiet_quantizer():
                quantize_static(str(src), out, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QInt8 if activations == "s8" else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                                extra_options={"ActivationSymmetric": activations == "s8", "WeightSymmetric": True})
        except Exception as e:  # the quantizer raises anything from onnx checker errors to RuntimeError
            raise BundleError(f"int8 quantization of {src.name} failed: {type(e).__name__}: {str(e)[:300]}") from None
        return onnx.load(out)


def derive(precision: str, src: Path, feeds: Optional[List[Dict[str, np.ndarray]]] = None, activations: str = "s8"):
    """The ModelProto of ``src`` at ``precision`` ("fp16" | "int8")."""
    if precision == "fp16":
        return to_fp16(src)
    if precision == "int8":
        return to_int8(src, feeds or [], activations)
    raise ConfigError(f"no derived files for precision {precision!r}")
