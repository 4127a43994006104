"""A small, exact ONNX → torch interpreter for the graphs oat-edge exports.

The torch backend runs the bundle's own ONNX files (not the checkpoint), so CPU/GPU torch
and onnxruntime execute the same graphs. onnx2torch would do this but needs torchvision; our
exported op set is small (each path lists its ``ops`` in the manifest), so we implement exactly
the ONNX semantics of those ops at opsets 13–21 and refuse anything else by name.

Constant inputs that are shapes/indices (Reshape's shape, Slice's starts/ends/axes/steps,
axes of reductions) are read once at load as Python ints; weights become module buffers so
``.to(device)`` moves them.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional

from oat_edge.errors import BundleError

_OPS: Dict[str, Callable] = {}


def op(*names: str):
    def register(fn):
        for n in names:
            _OPS[n] = fn
        return fn

    return register


def supported_ops() -> List[str]:
    return sorted(_OPS)


class _Node:
    __slots__ = ("op_type", "name", "inputs", "outputs", "attrs", "fn")

    def __init__(self, node, fn):
        self.op_type, self.name, self.fn = node.op_type, node.name or node.op_type, fn
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.attrs = {a.name: _attr(a) for a in node.attribute}


def _attr(a):
    from onnx import helper

    return helper.get_attribute_value(a)


class OnnxModule(torch.nn.Module):
    """``OnnxModule(model_proto)(images, film)`` computes the graph's single output."""

    def __init__(self, model, where: str = "graph"):
        super().__init__()
        from onnx import numpy_helper

        g = model.graph
        self.where = where
        domains = {o.domain: o.version for o in model.opset_import}
        self.opset = domains.get("", domains.get("ai.onnx", 0))
        unknown = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                          for n in g.node if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS})
        if unknown:
            raise BundleError(
                f"{where} uses ONNX op(s) {unknown} that the torch backend does not implement "
                f"(it implements {supported_ops()}); use the onnxruntime backend for this bundle"
            )
        # Constants: initializers and Constant nodes. Integer constants are also kept as numpy
        # for shape/index arguments.
        self._consts: Dict[str, np.ndarray] = {}
        for init in g.initializer:
            self._consts[init.name] = numpy_helper.to_array(init)
        for n in g.node:
            if n.op_type == "Constant":
                self._consts[n.output[0]] = _constant_value(n)
        self._buffer_names: Dict[str, str] = {}
        for i, (name, value) in enumerate(self._consts.items()):
            attr = f"const_{i}"
            self.register_buffer(attr, torch.from_numpy(np.array(value, copy=True)), persistent=False)
            self._buffer_names[name] = attr
        self.input_names = [i.name for i in g.input if i.name not in self._consts]
        self.output_names = [o.name for o in g.output]
        if len(self.output_names) != 1:
            raise BundleError(f"{where} must have exactly one output, has {self.output_names}")
        self._nodes = [_Node(n, _OPS[n.op_type]) for n in g.node if n.op_type != "Constant"]
        self._const_env: Optional[Dict[str, torch.Tensor]] = None

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .half() replace the buffers: rebuild the name -> tensor table lazily.
        self._const_env = None
        return super()._apply(fn, *args, **kwargs)

    def const_ints(self, name: str) -> Optional[List[int]]:
        v = self._consts.get(name)
        return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise BundleError(f"{self.where} takes inputs {self.input_names}, got {len(inputs)} tensors")
        if self._const_env is None:
            self._const_env = {name: getattr(self, attr) for name, attr in self._buffer_names.items()}
        env: Dict[str, torch.Tensor] = dict(self._const_env)
        env.update(zip(self.input_names, inputs))
        for node in self._nodes:
            args = [env[i] if i else None for i in node.inputs]
            out = node.fn(self, node, *args)
            if isinstance(out, tuple):
                for o_name, o in zip(node.outputs, out):
                    env[o_name] = o
            else:
                env[node.outputs[0]] = out
        return env[self.output_names[0]]


def _constant_value(node) -> np.ndarray:
    from onnx import numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int"):
            return np.array(a.f if a.name == "value_float" else a.i)
        if a.name in ("value_floats", "value_ints"):
            return np.array(list(a.floats) if a.name == "value_floats" else list(a.ints))
    raise BundleError(f"Constant node {node.name} has an unsupported value attribute")


def _ints(m: OnnxModule, node: _Node, pos: int, attr: Optional[str] = None) -> Optional[List[int]]:
    """An index/shape argument: the constant input at ``pos`` or (older opsets) an attribute."""
    if pos < len(node.inputs) and node.inputs[pos]:
        vals = m.const_ints(node.inputs[pos])
        if vals is None:
            raise BundleError(f"{m.where}: {node.op_type} {node.name} needs a constant input {pos}")
        return vals
    if attr is not None and attr in node.attrs:
        return [int(v) for v in node.attrs[attr]]
    return None


@op("Constant")
def _constant(m, n):  # evaluated once at load (see OnnxModule.__init__); never on the hot path
    return m._const_env[n.outputs[0]]


# --- elementwise ----------------------------------------------------------------------------------
@op("Add")
def _add(m, n, a, b):
    return a + b


@op("Sub")
def _sub(m, n, a, b):
    return a - b


@op("Mul")
def _mul(m, n, a, b):
    return a * b


@op("Div")
def _div(m, n, a, b):
    return a / b


@op("Neg")
def _neg(m, n, a):
    return -a


@op("Sqrt")
def _sqrt(m, n, a):
    return torch.sqrt(a)


@op("Relu")
def _relu(m, n, x):
    return torch.relu(x)


@op("LeakyRelu")
def _leaky(m, n, x):
    return functional.leaky_relu(x, float(n.attrs.get("alpha", 0.01)))


@op("Sigmoid")
def _sigmoid(m, n, x):
    return torch.sigmoid(x)


@op("Clip")
def _clip(m, n, x, lo=None, hi=None):
    if "min" in n.attrs or "max" in n.attrs:  # opset < 11
        return torch.clamp(x, n.attrs.get("min"), n.attrs.get("max"))
    return torch.clamp(x, lo, hi)


@op("Identity")
def _identity(m, n, x):
    return x


@op("Cast")
def _cast(m, n, x):
    from onnx import helper

    return x.to(torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(n.attrs["to"]))).dtype)


# --- linear algebra -------------------------------------------------------------------------------
@op("Conv")
def _conv(m, n, x, w, b=None):
    if x.dim() != 4:
        raise BundleError(f"{m.where}: Conv {n.name} on a {x.dim()}-D input (only 2-D convolutions are implemented)")
    if n.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise BundleError(f"{m.where}: Conv {n.name} uses auto_pad={n.attrs['auto_pad']!r} (not implemented)")
    strides = n.attrs.get("strides", [1, 1])
    dil = n.attrs.get("dilations", [1, 1])
    pads = list(n.attrs.get("pads", [0, 0, 0, 0]))
    group = int(n.attrs.get("group", 1))
    if pads[0] == pads[2] and pads[1] == pads[3]:
        return functional.conv2d(x, w, b, tuple(strides), (pads[0], pads[1]), tuple(dil), group)
    x = functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))  # ONNX: [h_begin, w_begin, h_end, w_end]
    return functional.conv2d(x, w, b, tuple(strides), 0, tuple(dil), group)


@op("Gemm")
def _gemm(m, n, a, b, c=None):
    if n.attrs.get("transA", 0):
        a = a.t()
    if n.attrs.get("transB", 0):
        b = b.t()
    alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@op("MatMul")
def _matmul(m, n, a, b):
    return torch.matmul(a, b)


@op("BatchNormalization")
def _batchnorm(m, n, x, scale, bias, mean, var):
    return functional.batch_norm(x, mean, var, scale, bias, False, 0.0, float(n.attrs.get("epsilon", 1e-5)))


# --- pooling and reductions -------------------------------------------------------------------------
@op("ReduceMean")
def _reduce_mean(m, n, x, axes_in=None):
    axes = _ints(m, n, 1, "axes")
    keep = bool(n.attrs.get("keepdims", 1))
    if axes is None:
        if n.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return torch.mean(x, dim=axes, keepdim=keep)


@op("GlobalAveragePool")
def _gap(m, n, x):
    return torch.mean(x, dim=list(range(2, x.dim())), keepdim=True)


@op("AveragePool", "MaxPool")
def _pool(m, n, x):
    if x.dim() != 4 or n.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise BundleError(f"{m.where}: {n.op_type} {n.name} with these attributes is not implemented")
    k = tuple(n.attrs["kernel_shape"])
    s = tuple(n.attrs.get("strides", [1, 1]))
    p = list(n.attrs.get("pads", [0, 0, 0, 0]))
    if p[0] != p[2] or p[1] != p[3]:
        raise BundleError(f"{m.where}: {n.op_type} {n.name} with asymmetric pads is not implemented")
    ceil = bool(n.attrs.get("ceil_mode", 0))
    if n.op_type == "MaxPool":
        return functional.max_pool2d(x, k, s, (p[0], p[1]), tuple(n.attrs.get("dilations", [1, 1])), ceil)
    return functional.avg_pool2d(x, k, s, (p[0], p[1]), ceil, bool(n.attrs.get("count_include_pad", 0)))


# --- shapes ---------------------------------------------------------------------------------------
@op("Reshape")
def _reshape(m, n, x, shape_in):
    shape = _ints(m, n, 1)
    if not n.attrs.get("allowzero", 0):  # 0 copies the input's dimension
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return torch.reshape(x, shape)


@op("Flatten")
def _flatten(m, n, x):
    axis = int(n.attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    lead = 1
    for d in x.shape[:axis]:
        lead *= d
    return torch.reshape(x, (lead, -1))


@op("Slice")
def _slice(m, n, x, *rest):
    starts, ends = _ints(m, n, 1, "starts"), _ints(m, n, 2, "ends")
    axes = _ints(m, n, 3, "axes") or list(range(len(starts)))
    steps = _ints(m, n, 4) or [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + x.dim() if axis < 0 else axis
        if step <= 0:
            raise BundleError(f"{m.where}: Slice {n.name} with step {step} is not implemented")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


@op("Squeeze")
def _squeeze(m, n, x, axes_in=None):
    axes = _ints(m, n, 1, "axes")
    if axes is None:
        return torch.squeeze(x)
    return torch.squeeze(x, [a + x.dim() if a < 0 else a for a in axes])


@op("Unsqueeze")
def _unsqueeze(m, n, x, axes_in=None):
    axes = _ints(m, n, 1, "axes")
    rank = x.dim() + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        x = torch.unsqueeze(x, a)
    return x


@op("Concat")
def _concat(m, n, *xs):
    return torch.cat([x for x in xs if x is not None], dim=int(n.attrs["axis"]))


@op("Transpose")
def _transpose(m, n, x):
    perm = n.attrs.get("perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


@op("Shape")
def _shape(m, n, x):
    dims = list(x.shape)
    start, end = int(n.attrs.get("start", 0)), n.attrs.get("end")
    return torch.tensor(dims[start:end] if end is not None else dims[start:], dtype=torch.int64)


@op("Gather")
def _gather(m, n, x, idx):
    axis = int(n.attrs.get("axis", 0))
    axis = axis + x.dim() if axis < 0 else axis
    idx = idx.to(torch.int64)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))


def load_onnx_module(file, where: Optional[str] = None) -> OnnxModule:
    """An OnnxModule from an .onnx file (BundleError if it cannot be parsed or uses other ops)."""
    import onnx

    try:
        model = onnx.load(str(file))
    except Exception as e:  # protobuf DecodeError and friends
        raise BundleError(f"{file} is not a readable ONNX file: {e}") from None
    return OnnxModule(model, where or str(file))


def check_ops(ops: Sequence[str], where: str) -> None:
    """Refuse a path whose manifest ``ops`` list names an op we do not implement (before loading)."""
    unknown = sorted(set(ops) - set(_OPS))
    if unknown:
        raise BundleError(
            f"{where} uses ONNX op(s) {unknown} that the torch backend does not implement "
            f"(it implements {supported_ops()}); use the onnxruntime backend for this bundle"
        )
