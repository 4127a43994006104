"""TensorRT engines as an export target: built into the bundle when TensorRT is installed here
(``--tensorrt auto``), always (``on``: an error without TensorRT) or never (``off``). On a
device, ``oat-edge build-engines`` does the same for an existing bundle."""

from __future__ import annotations

import time
import warnings

from oat_edge.errors import OatEdgeError
from oat_edge.export.targets.base import ExportTarget
from oat_edge.host import import_tensorrt, tensorrt_available


class TensorRTTarget(ExportTarget):
    name = "tensorrt"
    phase = "device"

    def check(self, job) -> None:
        if job.tensorrt == "on":
            import_tensorrt()  # ConfigError now, not after minutes of export

    def wanted(self, job) -> bool:
        return job.tensorrt == "on" or (job.tensorrt == "auto" and tensorrt_available())

    def write(self, job, bundle_dir):
        from oat_edge.export.tensorrt_builder import build_engines

        t0 = time.perf_counter()
        try:
            build_engines(bundle_dir, precision=job.engine_precision, batch=job.batch, progress=job.progress)
        except OatEdgeError as e:
            if job.tensorrt == "on":
                raise
            warnings.warn(f"TensorRT is installed but engines were not built ({e}); run `oat-edge build-engines` "
                          "on the target", RuntimeWarning)
        job.timings["engines"] = time.perf_counter() - t0
        return {}
