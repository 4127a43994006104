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


def load_path(spec: PathSpec, io: IOSpec, options):
    """A session of one path whose inputs and output are the ones the manifest names."""
    sess = open_session(spec.file, options=options)
    names = [i.name for i in sess.get_inputs()]
    want = [io.images, io.film] if spec.has_film else [io.images]
    if sorted(names) != sorted(want):
        raise BundleError(f"path {spec.id} ({spec.file.name}) has inputs {names}, the manifest says {want}")
    if io.logits not in [o.name for o in sess.get_outputs()]:
        raise BundleError(f"path {spec.id} has no output {io.logits!r}")
    return sess
