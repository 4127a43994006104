"""Loading bundle paths into ONNX Runtime sessions (options: ``oat_edge.onnxrt``)."""

from __future__ import annotations

import importlib.util
from typing import Tuple

from oat_edge.errors import BundleError
from oat_edge.onnxrt import open_session, session_options  # noqa: F401  (re-exported)
from oat_edge.runtime.backends.base import IOSpec, PathSpec


def available() -> Tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    return True, ""


def load_path(spec: PathSpec, io: IOSpec, options, providers=None, verified=None):
    """A session of one path whose inputs and output are the ones the manifest names; from the
    verified bytes of its file when ``verified`` (BundleContext.verified) holds them."""
    data, external = (verified or {}).get(spec.file, (None, ()))
    sess = open_session(spec.file, options=options, providers=providers, data=data, external=external)
    names = [i.name for i in sess.get_inputs()]
    want = [io.images, io.film] if spec.has_film else [io.images]
    if sorted(names) != sorted(want):
        raise BundleError(f"path {spec.id} ({spec.file.name}) has inputs {names}, the manifest says {want}")
    if io.logits not in [o.name for o in sess.get_outputs()]:
        raise BundleError(f"path {spec.id} has no output {io.logits!r}")
    # Shapes and types too: a graph of another width or model (same input names) would
    # otherwise fail only at the first inference, with onnxruntime's own error.
    want_shapes = {io.images: [None, *io.input_shape]}
    if spec.has_film:
        want_shapes[io.film] = [spec.film_size]
    want_shapes[io.logits] = [None, io.num_classes] if io.num_classes else None
    tensors = {t.name: t for t in list(sess.get_inputs()) + list(sess.get_outputs())}
    for name, want in want_shapes.items():
        t = tensors[name]
        if t.type != "tensor(float)":
            raise BundleError(f"path {spec.id} ({spec.file.name}): {name} is {t.type}, the bundle needs tensor(float)")
        if want is None:
            continue
        got = list(t.shape)
        ok = len(got) == len(want) and all(w is None or g == w or not isinstance(g, int) for g, w in zip(got, want))
        if not ok:
            raise BundleError(f"path {spec.id} ({spec.file.name}): {name} has shape {got}, the manifest says "
                              f"{['batch' if w is None else w for w in want]}")
    return sess
