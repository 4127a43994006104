"""Frozen path -> ONNX: export, check, simplify, canonicalise.

Exporter: ``torch.export`` with a dynamic batch dimension, then the dynamo ONNX exporter
(torch ≥ 2.9's supported path; it needs ``onnxscript``). It is slower than the legacy
TorchScript exporter, but it is the maintained one and its graphs are clean and deterministic. The example batch is 2: torch.export specialises a dimension of size 1.

Determinism: exporting the same checkpoint twice must give byte-identical files, so after
simplification we drop everything that is not the computation — doc strings, per-node
metadata (stack traces, fx node text), intermediate shape annotations — name nodes
``{op}_{index}`` in graph order, call the batch dimension ``batch`` and stamp the producer as
oat-edge instead of the torch build.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Optional, Tuple

import oat_edge

IMAGES, FILM, LOGITS = "images", "film", "logits"
EXAMPLE_BATCH = 2


@contextlib.contextmanager
def _quiet():
    """The exporter logs per-op chatter and warnings (torchvision missing, deprecated pytree
    API) that say nothing about our graph; keep them out of the user's terminal."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


_REGISTRY_CACHE: dict = {}


@contextlib.contextmanager
def _reuse_torchlib_registry():
    """torch.onnx rebuilds its op registry from torchlib on every export (≈2 s here). A bundle
    exports 6-30 graphs, so we memoise that (read-only after construction) registry per opset
    for the duration of our exports. This touches a private torch module: if it has moved, we
    simply export without the cache."""
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        original = cls.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def cached(klass, opset_version=None, **kw):
        if opset_version is None:
            return build(klass, **kw)
        key = (klass, opset_version, tuple(sorted(kw.items())))
        if key not in _REGISTRY_CACHE:
            _REGISTRY_CACHE[key] = build(klass, opset_version=opset_version, **kw)
        return _REGISTRY_CACHE[key]

    cls.from_torchlib = classmethod(cached)
    try:
        yield
    finally:
        cls.from_torchlib = original


def export_onnx(module, input_shape, film_size: Optional[int], opset: int):
    """ONNX ModelProto of a frozen path. ``film_size`` None: a baked path (images only)."""
    import torch

    images = torch.rand(EXAMPLE_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    if film_size is None:
        args, names, dyn = (images,), [IMAGES], {IMAGES: {0: batch}}
    else:
        film = torch.zeros(film_size)
        args, names, dyn = (images, film), [IMAGES, FILM], {IMAGES: {0: batch}, FILM: None}
    with _quiet(), torch.no_grad(), _reuse_torchlib_registry():
        ep = torch.export.export(module, args, dynamic_shapes=dyn, strict=False)
        program = torch.onnx.export(
            ep, args, dynamo=True, input_names=names, output_names=[LOGITS], opset_version=int(opset),
            optimize=True, verbose=False,
        )
    return program.model_proto


def simplify(model) -> Tuple[object, Optional[str]]:
    """(model, None) simplified by onnxsim, or (unchanged model, reason) when onnxsim fails or
    is missing: a bundle without simplification still works, so we warn, not fail."""
    try:
        import onnxsim
    except ImportError:
        return model, "onnxsim is not installed"
    try:
        with _quiet():
            simplified, ok = onnxsim.simplify(model)
    except Exception as e:  # onnxsim raises anything from protobuf to its C++ checker
        return model, f"onnxsim failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    if not ok:
        return model, "onnxsim could not validate the simplified graph"
    return simplified, None


def global_pooling(model):
    """ReduceMean over H and W (keepdims) of a 4-D tensor -> GlobalAveragePool. Same numbers,
    an op every opset and runtime knows (opset 18 changed ReduceMean's signature, which is
    what stops the version converter from going back to opset 17). In place; returns model."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
             if vi.type.tensor_type.HasField("shape")}
    for node in g.node:
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) > 1 and node.input[1] in inits:
            axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
        else:
            axes = attrs.get("axes")
        if attrs.get("keepdims", 1) != 1 or ranks.get(node.input[0]) != 4 or axes is None:
            continue
        if sorted(a % 4 for a in axes) != [2, 3]:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
    used = {x for n in g.node for x in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def convert_opset(model, opset: int):
    """Bring a graph to ``opset`` with onnx's version converter (the exporter emits ≥ 18)."""
    from onnx import version_converter

    from oat_edge.errors import ConfigError

    current = next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
    if current == opset:
        return model
    try:
        converted = version_converter.convert_version(model, int(opset))
        import onnx

        onnx.checker.check_model(converted, full_check=True)
    except Exception as e:
        raise ConfigError(f"cannot express the exported graph in opset {opset} ({str(e).splitlines()[0][:200]}); use --opset {current}") from None
    return converted


def canonicalize(model, graph_name: str):
    """Strip non-computational noise and fix names (see module docstring). In place; returns model."""
    import onnx

    g = model.graph
    model.producer_name = "oat-edge"
    model.producer_version = oat_edge.__version__
    model.doc_string = ""
    model.domain = ""
    model.model_version = 0
    del model.metadata_props[:]
    g.name = graph_name
    g.doc_string = ""
    del g.value_info[:]
    for i, node in enumerate(g.node):
        node.name = f"{node.op_type}_{i}"
        node.doc_string = ""
        del node.metadata_props[:]
    for init in g.initializer:
        init.doc_string = ""
        if hasattr(init, "metadata_props"):
            del init.metadata_props[:]
    # The batch dimension: one symbolic name on every input and output.
    for vi in list(g.input) + list(g.output):
        vi.doc_string = ""
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value") and vi.name in (IMAGES, LOGITS):
            dims[0].dim_param = "batch"
    # Keep only opset imports that nodes use (the exporter can leave helper domains behind).
    used = {n.domain for n in g.node} | {""}
    keep = [op for op in model.opset_import if op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    if all(n.domain in ("", "ai.onnx") for n in g.node):
        del model.functions[:]
    onnx.checker.check_model(model, full_check=True)
    return model


def op_types(model) -> list[str]:
    """Sorted ONNX op types used by a graph (including subgraphs, though ours have none)."""
    ops = set()

    def walk(graph):
        for n in graph.node:
            ops.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}")
            for a in n.attribute:
                if a.g is not None and a.HasField("g"):
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)

    walk(model.graph)
    return sorted(ops)


def to_bytes(model) -> bytes:
    """Serialized model. ``SerializeToString`` is deterministic for a given proto in one
    protobuf build; our protos carry no maps, so field order is fixed."""
    return model.SerializeToString()
