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

``ModeBaker`` is what the runtime's ``Bakery`` (runtime/bakery.py) bakes with: it folds a mode
with ``bake_graph``, opens the result on the backend and runs the FiLM path as the parity
reference.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from oat_edge.errors import BundleError, DependencyError, FallbackWarning, OatEdgeError
from oat_edge.runtime.bakery import BakeConfig, Bakery

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
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if film_input not in [i.name for i in m.graph.input]:
        raise BakeError(f"the graph has no {film_input!r} input")
    folder = _Folder(m.graph, film_input, np.ascontiguousarray(film, dtype=np.float32).reshape(-1))
    folder.evaluate_film_nodes()  # 1.
    folder.fold()  # 2.
    folder.write()  # 3.
    if graph_name:
        m.graph.name = graph_name
    return BakedGraph(m, folder.changed, folder.folded, folder.kept)


class _Folder:
    """The three steps of the module docstring on one graph (edited in place)."""

    def __init__(self, graph, film_input: str, film: np.ndarray):
        self.g = graph
        self.film_input = film_input
        self.inits = {i.name: i for i in graph.initializer}
        self.consts: Dict[str, np.ndarray] = {film_input: film}  # film-derived values (computed here)
        self.producers = {}
        for node in graph.node:
            for o in node.output:
                self.producers[o] = node
            if node.op_type == "Constant":
                value = _attr(node, "value")
                if value is not None:
                    self.inits[node.output[0]] = value
        self.derived = {film_input}
        self.removed = set()
        self.changed: Dict[str, np.ndarray] = {}  # mode-dependent initializers
        self.renamed: Dict[str, str] = {}  # output of a folded Mul/Add -> the conv output it now is
        self.folded = self.kept = 0

    def _const_value(self, name: str) -> Optional[np.ndarray]:
        from onnx import numpy_helper

        if name in self.consts:
            return self.consts[name]
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return None

    def evaluate_film_nodes(self) -> None:
        """Step 1: evaluate every node that depends on film."""
        for node in self.g.node:
            if not any(i in self.derived for i in node.input):
                continue
            args = [self._const_value(i) if i else None for i in node.input]
            if node.op_type in _EVAL_OPS and all(a is not None for a, i in zip(args, node.input) if i):
                self.consts[node.output[0]] = np.asarray(_eval(node, args))
                self.derived.add(node.output[0])
                self.removed.add(id(node))
            elif node.op_type in ("Mul", "Add"):
                continue  # FiLM applied to activations: folded or given a constant operand below
            else:
                raise BakeError(f"node {node.name} ({node.op_type}) reads the FiLM vector in a way baking does not know")

    def fold(self) -> None:
        """Step 2: fold per-channel Mul/Add into the Conv before them."""
        from onnx import numpy_helper

        self.consumers: Dict[str, List] = {}
        self.weight_users: Dict[str, int] = {}
        for node in self.g.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
            for i in node.input[1:]:
                self.weight_users[i] = self.weight_users.get(i, 0) + 1
        self.outputs = {o.name for o in self.g.output}
        for node in list(self.g.node):
            if (id(node) in self.removed or node.op_type not in ("Mul", "Add")
                    or not any(i in self.derived for i in node.input)):
                continue
            data_idx = 0 if node.input[1] in self.derived else 1
            data = self.renamed.get(node.input[data_idx], node.input[data_idx])
            c = self.consts[node.input[1 - data_idx]]
            conv = self.producers.get(data)
            ok = self._foldable_conv(conv, data)
            ch = _per_channel(c, numpy_helper.to_array(self.inits[conv.input[1]]).shape[0]) if ok else None
            if ch is None:
                self._keep(node, data_idx, data)
            else:
                self._fold_into(node, conv, ch, data)

    def _foldable_conv(self, conv, data: str) -> bool:
        """Whether ``data`` is the output of a Conv used by nothing else, whose weight and bias
        are initializers of its own."""
        users = self.weight_users
        return (conv is not None and conv.op_type == "Conv" and data not in self.outputs
                and len([u for u in self.consumers.get(data, []) if id(u) not in self.removed]) == 1
                and conv.input[1] in self.inits and users.get(conv.input[1], 0) == 1
                and (len(conv.input) < 3 or not conv.input[2] or (conv.input[2] in self.inits
                                                                 and users.get(conv.input[2], 0) == 1)))

    def _keep(self, node, data_idx: int, data: str) -> None:
        """Keep the op; its FiLM operand becomes a constant initializer."""
        from onnx import numpy_helper

        name = node.input[1 - data_idx]
        value = self.consts[name].astype(np.float32)
        if name not in self.inits:
            self.g.initializer.append(numpy_helper.from_array(value, name))
            self.inits[name] = self.g.initializer[-1]
        self.changed[name] = value  # its value is the mode's γ or β: a refit must rewrite it too
        node.input[data_idx] = data
        self.kept += 1

    def _conv_params(self, conv):
        from onnx import numpy_helper

        w_name = conv.input[1]
        w = self.changed.get(w_name)
        if w is None:
            w = numpy_helper.to_array(self.inits[w_name]).astype(np.float32)
        b_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if b_name is None:
            b = np.zeros(w.shape[0], np.float32)
        else:
            b = self.changed.get(b_name)
            if b is None:
                b = numpy_helper.to_array(self.inits[b_name]).astype(np.float32)
        return w, b

    def _fold_into(self, node, conv, ch: np.ndarray, data: str) -> None:
        """W'[o] = γ[o]·W[o], b'[o] = γ[o]·b[o] for a Mul; b'[o] += β[o] for an Add."""
        w, b = self._conv_params(conv)
        if node.op_type == "Mul":
            w = w * ch.reshape(-1, *([1] * (w.ndim - 1)))
            b = b * ch
        else:
            b = b + ch
        self.changed[conv.input[1]] = w.astype(np.float32)
        if len(conv.input) < 3 or not conv.input[2]:
            bias_name = conv.input[1] + "__film_bias"
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = bias_name
            self.weight_users[bias_name] = 1
        self.changed[conv.input[2]] = b.astype(np.float32)
        # The Mul/Add output is now the conv output: rewire its consumers.
        for user in self.consumers.get(node.output[0], []):
            for k, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[k] = data
            self.consumers.setdefault(data, []).append(user)
        if node.output[0] in self.outputs:
            raise BakeError("a FiLM op produces the graph output")
        self.renamed[node.output[0]] = data
        self.removed.add(id(node))
        self.folded += 1

    def write(self) -> None:
        """Step 3: write the folded weights, drop film, dead nodes and unused initializers."""
        import onnx
        from onnx import numpy_helper

        g = self.g
        for name, value in self.changed.items():
            new = numpy_helper.from_array(value, name)
            if name in self.inits and isinstance(self.inits[name], onnx.TensorProto) and self.inits[name] in g.initializer:
                self.inits[name].CopyFrom(new)
            else:
                g.initializer.append(new)
        keep_nodes = [n for n in g.node if id(n) not in self.removed]
        live = set(self.outputs)
        alive = []
        for node in reversed(keep_nodes):
            if any(o in live for o in node.output):
                alive.append(node)
                live.update(i for i in node.input if i)
        alive.reverse()
        del g.node[:]
        g.node.extend(alive)
        keep_inits = [i for i in g.initializer if i.name in live]
        del g.initializer[:]
        g.initializer.extend(keep_inits)
        keep_inputs = [i for i in g.input if i.name != self.film_input]
        del g.input[:]
        g.input.extend(keep_inputs)
        if self.film_input in live:
            raise BakeError("the FiLM vector is still read after baking")


class ModeBaker:
    """What the runtime's ``Bakery`` bakes with: a mode folded into its BN path (``bake_graph``)
    and opened on the backend, the FiLM path as the parity reference, and the mode held now."""

    def __init__(self, state, backend, film_input: str):
        self.state = state  # runtime.modestate.ModeState
        self.backend = backend
        self.film_input = film_input
        self._sources: Dict[int, object] = {}  # BN path index -> its parsed ONNX

    def graph(self, lam: float, wi: int, index: int) -> BakedGraph:
        """Mode (λ, width index) folded into BN path ``index``."""
        spec = self.state.paths[index]
        source = self._sources.get(index)
        if source is None:
            source = self._sources[index] = load_path_model(spec.file, spec.sha256)
        return bake_graph(source, self.state.film.vector(lam, wi), self.film_input, f"{spec.id}@lam{lam:g}")

    def bake(self, key, lam: float, wi: int, index: int):
        """(run, bytes, info): the mode folded and opened on the backend as cache entry ``key``."""
        spec = self.state.paths[index]
        baked = self.graph(lam, wi, index)
        run, nbytes, info = self.backend.bake_mode(baked, key, f"{spec.id} at λ={lam:g}", spec.id)
        return run, nbytes, {"path": spec.id, "folded_sites": baked.folded_sites, "kept_ops": baked.kept_ops, **info}

    def reference(self, index: int, images: np.ndarray, lam: float, wi: int) -> np.ndarray:
        return self.backend.run(index, images, self.state.film.vector(lam, wi))

    def held(self):
        return self.state.held_bake_key()


def parity_images(manifest: dict, bundle_dir: Path, input_shape: Tuple[int, ...],
                  verified: Dict[str, bytes]) -> Tuple[np.ndarray, float]:
    """The bundle's reference images and tolerance (parity.npz), else seeded random images and
    the export gate's 1e-4, with one warning naming why (random images check a baked graph on
    inputs unlike the bundle's)."""
    from oat_edge.bundle.safe_files import inside, load_npz

    ref = manifest.get("parity_reference")
    if not ref:
        why = "the bundle has no parity reference (parity.npz)"
    else:
        try:
            data = verified.get(ref["file"])
            arrays = load_npz(data if data is not None else inside(bundle_dir, ref["file"], "parity reference"),
                              "parity reference")
            images = np.ascontiguousarray(arrays["images"], np.float32)
            if images.ndim == 4 and tuple(images.shape[1:]) == tuple(input_shape) and len(images):
                return images, float(ref.get("tolerance") or 1e-4)
            why = (f"its images have shape {list(images.shape)}, not [N, {', '.join(map(str, input_shape))}]")
        except KeyError:
            why = "it holds no 'images' array"
        except (TypeError, OatEdgeError) as e:
            why = f"it cannot be read ({e})"
        why = f"the parity reference {ref['file']} is unusable: {why}"
    warnings.warn(f"bundle {bundle_dir}: background baking checks baked graphs on random images, because {why}; "
                  "re-export the bundle to restore the check on its reference images", FallbackWarning, stacklevel=2)
    return np.random.default_rng(0).random((8,) + tuple(input_shape), dtype=np.float32), 1e-4


def start_bakery(baker: ModeBaker, backend_name: str, config: BakeConfig, parity: Callable[[], tuple],
                 batch_max: int) -> Tuple[Optional[Bakery], str]:
    """(the bakery, "on"), or (None, "off: why") where this backend or install cannot bake;
    ``parity()`` gives the parity images and tolerance."""
    if not baker.backend.supports_baking:
        return None, (f"off: the {backend_name} backend cannot bake modes here (onnxruntime on the CPU "
                      "execution provider can; tensorrt can with pycuda, by engine refit)")
    try:
        require_onnx()
    except OatEdgeError as e:
        return None, f"off: {e}"
    images, tol = parity()
    return Bakery(baker, images, tol, config, batch_max), "on"
