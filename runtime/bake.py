"""Fold one mode's FiLM into a width's BN path: the bundle's FiLM-as-input graph becomes a baked
graph for one (λ, width), with numpy + onnx only (no torch). docs/bundle.md, "Baking at run time".

The BN path of a width already has every BN folded into its convolutions (export); what is
left per mode is FiLM site k, ``h ← γ_k·h + β_k``, with γ_k/β_k sliced out of the ``film``
input. Baking:

1. ``film`` becomes a constant (the mode's flat FiLM vector) and every node that depends on it
   (Slice, Reshape, ...) is evaluated in numpy, so each site's Mul/Add gets a constant operand;
2. a Mul by a per-channel constant whose data operand is a Conv output used by nothing else
   is folded into that Conv: W'[o] = γ[o]·W[o], b'[o] = γ[o]·b[o]; an Add of a per-channel
   constant after such a Conv is folded into its bias: b'[o] += β[o]. Repeated until nothing
   changes, so conv → Mul → Add collapses into one Conv;
3. a FiLM Mul/Add that cannot be folded (no Conv right before it) stays, with a constant
   operand; the ``film`` input, dead nodes and unused initializers are removed.

The result computes the same function as the BN path fed with that vector (to float rounding);
the runtime parity-checks every baked graph before it serves a frame. ``changed`` lists every
initializer whose value depends on the mode — the folded Conv weights and biases and the
constant operands of the kept FiLM ops — which is what a TensorRT refit rewrites.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from oat_edge.errors import BundleError, DependencyError

# Ops a FiLM-dependent node may be (all shape/elementwise, evaluated here in numpy).
_EVAL_OPS = ("Slice", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Mul", "Add", "Sub", "Div", "Concat",
             "Gather", "Flatten", "Cast", "Expand")


class BakeError(BundleError):
    """A BN path that cannot be baked (an op or layout this recipe does not know, e.g. a bundle
    from another exporter): the mode keeps running on the FiLM-as-input path."""


@dataclass
class BakedGraph:
    model: object  # onnx.ModelProto, images -> logits
    changed: Dict[str, np.ndarray] = field(default_factory=dict)  # mode-dependent initializers
    folded_sites: int = 0  # FiLM Mul/Add folded into a Conv
    kept_ops: int = 0  # FiLM Mul/Add left as constant ops

    def to_bytes(self) -> bytes:
        return self.model.SerializeToString()


def require_onnx():
    try:
        import onnx  # noqa: F401
        from onnx import numpy_helper  # noqa: F401
    except ImportError:
        raise DependencyError("baking modes at run time needs the onnx package (pip install onnx)") from None
    import onnx

    return onnx


def load_path_model(file: Path, sha256: str = ""):
    """The ONNX model of a BN path, read once and checked against the manifest's sha256 (the
    file was verified at load; this catches a change since)."""
    onnx = require_onnx()
    data = Path(file).read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise BundleError(f"{file} changed since the bundle was loaded (sha256 mismatch)")
    return onnx.load_from_string(data)


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _eval(node, args: List[Optional[np.ndarray]]) -> np.ndarray:
    op = node.op_type
    if op == "Slice":
        data, starts, ends = args[0], args[1], args[2]
        axes = args[3] if len(args) > 3 and args[3] is not None else np.arange(len(starts))
        steps = args[4] if len(args) > 4 and args[4] is not None else np.ones(len(starts), np.int64)
        index = [slice(None)] * data.ndim
        for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
            index[int(a) % data.ndim] = slice(int(s), int(e), int(st))
        return data[tuple(index)]
    if op == "Reshape":
        shape = [int(v) for v in args[1].tolist()]
        if not _attr(node, "allowzero", 0):
            shape = [args[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return args[0].reshape(shape)
    if op == "Unsqueeze":
        axes = args[1].tolist() if len(args) > 1 and args[1] is not None else _attr(node, "axes")
        out = args[0]
        for a in sorted(int(a) % (out.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return out
    if op == "Squeeze":
        axes = args[1].tolist() if len(args) > 1 and args[1] is not None else _attr(node, "axes")
        return np.squeeze(args[0], axis=None if axes is None else tuple(int(a) for a in axes))
    if op == "Identity":
        return args[0]
    if op in ("Mul", "Add", "Sub", "Div"):
        f = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}[op]
        return f(args[0], args[1]).astype(np.result_type(args[0], args[1]))
    if op == "Concat":
        return np.concatenate(args, axis=int(_attr(node, "axis")))
    if op == "Gather":
        return np.take(args[0], args[1], axis=int(_attr(node, "axis", 0)))
    if op == "Flatten":
        a = int(_attr(node, "axis", 1)) % max(args[0].ndim, 1)
        return args[0].reshape(int(np.prod(args[0].shape[:a])), -1)
    if op == "Cast":
        from onnx import helper

        return args[0].astype(helper.tensor_dtype_to_np_dtype(int(_attr(node, "to"))))
    if op == "Expand":
        return args[0] * np.ones([int(v) for v in args[1].tolist()], args[0].dtype)
    raise BakeError(f"cannot evaluate {op}")  # not reached: callers check _EVAL_OPS


def _per_channel(c: np.ndarray, channels: int) -> Optional[np.ndarray]:
    """c as [channels] when it broadcasts against an NCHW tensor per output channel only."""
    if c.ndim == 4 and c.shape[0] == 1 and c.shape[2:] == (1, 1) and c.shape[1] == channels:
        return c.reshape(channels)
    if c.ndim == 3 and c.shape[1:] == (1, 1) and c.shape[0] == channels:
        return c.reshape(channels)
    return None


def bake_graph(model, film: np.ndarray, film_input: str = "film", graph_name: str = "") -> BakedGraph:
    """A baked copy of ``model`` (a BN path) for the flat FiLM vector ``film`` (see the module
    docstring). BakeError when the graph does not have the layout this recipe folds."""
    onnx = require_onnx()
    from onnx import helper, numpy_helper

    film = np.ascontiguousarray(film, dtype=np.float32).reshape(-1)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if film_input not in [i.name for i in g.input]:
        raise BakeError(f"the graph has no {film_input!r} input")
    inits = {i.name: i for i in g.initializer}
    consts: Dict[str, np.ndarray] = {}  # film-derived values (computed here)
    consts[film_input] = film

    def const_value(name: str) -> Optional[np.ndarray]:
        if name in consts:
            return consts[name]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return None

    # 1. Evaluate every node that depends on film.
    producers = {}
    for node in g.node:
        for o in node.output:
            producers[o] = node
        if node.op_type == "Constant":
            value = _attr(node, "value")
            if value is not None:
                inits[node.output[0]] = value
    film_nodes = []
    derived = {film_input}
    for node in g.node:
        if not any(i in derived for i in node.input):
            continue
        args = [const_value(i) if i else None for i in node.input]
        if node.op_type in _EVAL_OPS and all(a is not None for a, i in zip(args, node.input) if i):
            consts[node.output[0]] = np.asarray(_eval(node, args))
            derived.add(node.output[0])
            film_nodes.append(node)
        elif node.op_type in ("Mul", "Add"):
            continue  # FiLM applied to activations: folded or given a constant operand below
        else:
            raise BakeError(f"node {node.name} ({node.op_type}) reads the FiLM vector in a way baking does not know")

    # 2. Fold per-channel Mul/Add into the Conv before them.
    consumers: Dict[str, List] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in g.output}
    removed = set(id(n) for n in film_nodes)
    renamed: Dict[str, str] = {}  # output of a folded Mul/Add -> the conv output it now is
    changed: Dict[str, np.ndarray] = {}
    weight_users = {}
    for node in g.node:
        for i in node.input[1:]:
            weight_users[i] = weight_users.get(i, 0) + 1
    folded = kept = 0

    def conv_params(conv):
        w_name = conv.input[1]
        w = changed.get(w_name)
        if w is None:
            w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        b_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if b_name is None:
            b = np.zeros(w.shape[0], np.float32)
        else:
            b = changed.get(b_name)
            if b is None:
                b = numpy_helper.to_array(inits[b_name]).astype(np.float32)
        return w, b

    for node in list(g.node):
        if id(node) in removed or node.op_type not in ("Mul", "Add") or not any(i in derived for i in node.input):
            continue
        data_idx = 0 if node.input[1] in derived else 1
        data = renamed.get(node.input[data_idx], node.input[data_idx])
        c = consts[node.input[1 - data_idx]]
        conv = producers.get(data)
        ok = (conv is not None and conv.op_type == "Conv" and data not in outputs
              and len([u for u in consumers.get(data, []) if id(u) not in removed]) == 1
              and conv.input[1] in inits and weight_users.get(conv.input[1], 0) == 1
              and (len(conv.input) < 3 or not conv.input[2] or (conv.input[2] in inits
                                                               and weight_users.get(conv.input[2], 0) == 1)))
        ch = _per_channel(c, numpy_helper.to_array(inits[conv.input[1]]).shape[0]) if ok else None
        if ch is None:
            # Keep the op; its FiLM operand becomes a constant initializer.
            name = node.input[1 - data_idx]
            value = consts[name].astype(np.float32)
            if name not in inits:
                g.initializer.append(numpy_helper.from_array(value, name))
                inits[name] = g.initializer[-1]
            changed[name] = value  # its value is the mode's γ or β: a refit must rewrite it too
            node.input[data_idx] = data
            kept += 1
            continue
        w, b = conv_params(conv)
        if node.op_type == "Mul":
            w = w * ch.reshape(-1, *([1] * (w.ndim - 1)))
            b = b * ch
        else:
            b = b + ch
        changed[conv.input[1]] = w.astype(np.float32)
        if len(conv.input) < 3 or not conv.input[2]:
            bias_name = conv.input[1] + "__film_bias"
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = bias_name
            weight_users[bias_name] = 1
        changed[conv.input[2]] = b.astype(np.float32)
        # The Mul/Add output is now the conv output: rewire its consumers.
        for user in consumers.get(node.output[0], []):
            for k, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[k] = data
            consumers.setdefault(data, []).append(user)
        if node.output[0] in outputs:
            raise BakeError("a FiLM op produces the graph output")
        renamed[node.output[0]] = data
        removed.add(id(node))
        folded += 1

    # 3. Write the folded weights, drop film, dead nodes and unused initializers.
    for name, value in changed.items():
        new = numpy_helper.from_array(value, name)
        if name in inits and isinstance(inits[name], onnx.TensorProto) and inits[name] in g.initializer:
            inits[name].CopyFrom(new)
        else:
            g.initializer.append(new)
    keep_nodes = [n for n in g.node if id(n) not in removed]
    del g.node[:]
    g.node.extend(keep_nodes)
    live = set(outputs)
    alive = []
    for node in reversed(g.node):
        if any(o in live for o in node.output):
            alive.append(node)
            live.update(i for i in node.input if i)
    alive.reverse()
    del g.node[:]
    g.node.extend(alive)
    keep_inits = [i for i in g.initializer if i.name in live]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    keep_inputs = [i for i in g.input if i.name != film_input]
    del g.input[:]
    g.input.extend(keep_inputs)
    if film_input in live:
        raise BakeError("the FiLM vector is still read after baking")
    if graph_name:
        g.name = graph_name
    return BakedGraph(m, changed, folded, kept)
