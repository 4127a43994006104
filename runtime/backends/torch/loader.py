"""Loading bundle paths as torch modules: the bundle's own ONNX graphs, interpreted op by op
(``oat_edge.runtime.backends.onnx_torch``), so torch and onnxruntime run the same files."""

from __future__ import annotations

import importlib.util
from typing import Tuple

from oat_edge.runtime.backends.base import PathSpec


def available() -> Tuple[bool, str]:
    missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed (pip install torch onnx)"
    return True, ""


def load_path(spec: PathSpec, device):
    """The path as an eval-mode torch module on ``device`` (its ops checked first)."""
    from oat_edge.runtime.backends.onnx_torch import check_ops, load_onnx_module

    if spec.ops:
        check_ops(spec.ops, f"path {spec.id}")
    return load_onnx_module(spec.file, f"path {spec.id}").to(device).eval()
