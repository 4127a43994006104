"""TensorRT engines built on the device (``loader``: engine selection and staleness;
``runner``: ``TensorRTRunner``, C++ executor or pycuda). Importing this package imports
neither TensorRT nor pycuda."""

from oat_edge.host import tensorrt_importable
from oat_edge.runtime.backends.tensorrt.loader import auto_rule, engines_usable, select_engines
from oat_edge.runtime.backends.tensorrt.runner import (
    TensorRTRunner, binding_shapes, check_profile, check_tensorrt_versions, engine_io_problem, engine_scratch_bytes,
    max_batch,
)

__all__ = ["TensorRTRunner", "auto_rule", "binding_shapes", "check_profile", "check_tensorrt_versions",
           "engine_io_problem", "engine_scratch_bytes", "engines_usable", "max_batch", "select_engines",
           "tensorrt_importable"]
