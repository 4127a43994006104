"""Building TensorRT engines (one thin, import-guarded class written against NVIDIA's documented
Python API, TensorRT 10.x and 11.x) and the fp16 ONNX copy TensorRT 11's strongly typed networks
need. Core, because two stages build engines: ``oat-edge build-engines`` (export, one engine per
path: oat_edge.export.targets.tensorrt) and the runtime's background baking (one refittable engine
per width: oat_edge.runtime.backends.tensorrt.refit).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from oat_edge.errors import BundleError, ConfigError
from oat_edge.host import import_tensorrt, is_jetson, total_memory_bytes

JETSON_WORKSPACE_CAP_MB = 1024


def default_workspace_mb(gpu: Optional[Dict[str, str]], memory_bytes: Optional[int] = None) -> Optional[int]:
    """The builder workspace limit when none is given: on Jetson min(1024, RAM/8) MiB (at least
    256), elsewhere None (TensorRT's default, the GPU's memory)."""
    if not is_jetson(gpu):
        return None
    mem = memory_bytes if memory_bytes is not None else total_memory_bytes()
    if not mem:
        return JETSON_WORKSPACE_CAP_MB
    return max(256, min(JETSON_WORKSPACE_CAP_MB, int(mem) // 8 >> 20))


# --- fp16 ONNX (TensorRT 11 strong typing) -----------------------------------------------------
FP16_MAX = 65504.0


def to_fp16(arr, where: str):
    """``arr`` as float16; BundleError when a value is not finite or outside float16's range
    (a cast would turn it into inf)."""
    import numpy as np

    arr = np.asarray(arr)
    big = float(np.max(np.abs(arr))) if arr.size else 0.0
    if not np.all(np.isfinite(arr)) or big > FP16_MAX:
        raise BundleError(f"{where} holds values outside the float16 range (max |x| = {big:.3g}); build fp32 engines instead")
    return arr.astype(np.float16)


def convert_to_fp16(model, keep_io_types: bool = True):
    """A copy of an fp32 ONNX model computing in float16: float initializers and Constant
    tensors become float16, Cast-to-float becomes Cast-to-float16, and (with
    ``keep_io_types``) float32 inputs/outputs stay float32 with Casts at the graph edges —
    what a strongly typed TensorRT network needs for an fp16 engine. BundleError if a weight
    does not fit float16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

    def to_half(t, where):
        return numpy_helper.from_array(to_fp16(numpy_helper.to_array(t), where), t.name)

    for i, t in enumerate(g.initializer):
        if t.data_type == FLOAT:
            g.initializer[i].CopyFrom(to_half(t, f"initializer {t.name}"))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == FLOAT:
                a.t.CopyFrom(to_half(a.t, f"constant {node.name}"))
            if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                a.i = HALF
            if node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                raise BundleError(f"constant {node.name} uses {a.name}; convert_to_fp16 does not handle it")

    def rename(old, new, field):
        for n in g.node:
            names = getattr(n, field)
            for j, x in enumerate(names):
                if x == old:
                    names[j] = new

    head, tail = [], []
    for vi, is_input in [(vi, True) for vi in g.input] + [(vi, False) for vi in g.output]:
        if vi.type.tensor_type.elem_type != FLOAT:
            continue
        if not keep_io_types:
            vi.type.tensor_type.elem_type = HALF
            continue
        # The graph's edge keeps its float32 name; inside, a float16 copy of it is used.
        half = f"{vi.name}__fp16"
        if is_input:
            rename(vi.name, half, "input")
            head.append(helper.make_node("Cast", [vi.name], [half], to=HALF, name=f"Cast_in_{vi.name}"))
        else:
            rename(vi.name, half, "output")
            rename(vi.name, half, "input")
            tail.append(helper.make_node("Cast", [half], [vi.name], to=FLOAT, name=f"Cast_out_{vi.name}"))
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    return m


# --- the TensorRT calls ----------------------------------------------------------------------
class TensorRTEngineBuilder:
    """Builds serialized engines with the TensorRT Python API (10.x and 11.x)."""

    def __init__(self):
        self.trt = import_tensorrt()
        self.version = str(self.trt.__version__)
        self.major = int(self.version.split(".")[0])
        if self.major < 10:
            raise ConfigError(f"TensorRT {self.version} is too old: oat-edge builds and runs engines with TensorRT >= 10 "
                              "(JetPack 6.1+ ships 10.3)")
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)

    @property
    def fp16_method(self) -> str:
        return "fp16-onnx" if self.major >= 11 else "builder-flag"

    def build(self, onnx_bytes: bytes, dynamic_inputs: Dict[str, Tuple[tuple, tuple, tuple]], precision: str,
              workspace_mb: Optional[int] = None, timing_cache: Optional[bytes] = None,
              refit: bool = False) -> Tuple[bytes, Optional[bytes]]:
        """(serialized engine, updated timing cache). ``onnx_bytes`` is already the graph to
        parse (the fp16 copy for TensorRT 11 fp16 builds). ``refit``: build with
        ``BuilderFlag.REFIT`` so ``trt.Refitter`` can rewrite its weights by their ONNX
        initializer names (oat_edge.runtime.backends.tensorrt.refit)."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        strong = precision == "fp16" and self.fp16_method == "fp16-onnx"
        if strong and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BundleError(f"TensorRT's ONNX parser rejected the graph: {errors}")
        config = builder.create_builder_config()
        if workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        if precision == "fp16" and not strong:
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        if refit:
            config.set_flag(trt.BuilderFlag.REFIT)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in dynamic_inputs.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(timing_cache or b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            if timing_cache:
                raise ConfigError("TensorRT rejected the timing cache (written on another GPU or TensorRT version, or "
                                  "corrupt); delete it or pass another --timing-cache path")
            raise BundleError("TensorRT could not set up an empty timing cache")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BundleError("TensorRT failed to build the engine (see the TensorRT log above)")
        new_cache = config.get_timing_cache()
        return bytes(plan), (bytes(new_cache.serialize()) if new_cache is not None else None)
