"""oat_edge.export — checkpoint -> bundle (docs/bundle.md): frozen ONNX paths per (BN branch ×
width), FiLM tables, baked hot modes, the parity gate, TensorRT engines.

Importing this package is cheap and torch-free: ``load_manifest``, ``verify_bundle`` and
``film_vector`` need only numpy (and onnxruntime to run paths); ``export_bundle`` imports
torch when called.
"""

from oat_edge.export.bundle import load_manifest, select_entry, verify_bundle
from oat_edge.export.film_tables import film_vector, load_film_tables

__all__ = ["export_bundle", "build_engines", "load_manifest", "verify_bundle", "select_entry", "film_vector",
           "load_film_tables", "check_engine"]


def __getattr__(name):
    # Lazy: these pull in torch/onnx (export) or nothing heavy but keep `import` minimal.
    if name == "export_bundle":
        from oat_edge.export.pipeline import export_bundle

        return export_bundle
    if name in ("build_engines", "check_engine"):
        from oat_edge.export import tensorrt_builder

        return getattr(tensorrt_builder, name)
    raise AttributeError(f"module 'oat_edge.export' has no attribute {name!r}")
