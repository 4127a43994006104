"""Export targets (``base.ExportTarget``), run by ``export_bundle`` in this order. Adding a
target: a module here with an ``ExportTarget`` subclass, and one line below."""

from __future__ import annotations

from typing import List

from oat_edge.export.targets.base import ExportTarget

TARGETS = {
    "onnx": "oat_edge.export.targets.onnx:OnnxTarget",
    "tensorrt": "oat_edge.export.targets.tensorrt:TensorRTTarget",
}


def load_targets() -> List[ExportTarget]:
    import importlib

    out = []
    for spec in TARGETS.values():
        module, _, cls = spec.partition(":")
        out.append(getattr(importlib.import_module(module), cls)())
    return out


__all__ = ["TARGETS", "ExportTarget", "load_targets"]
