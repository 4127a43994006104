"""oat_edge.export — checkpoint -> bundle (docs/bundle.md): frozen ONNX paths per (BN branch ×
width), FiLM tables, baked hot modes, the parity gate, TensorRT engines.

Importing this package is cheap and torch-free; ``export_bundle`` imports torch when called.
What a bundle *is* (reading, validation, the mode -> file rule, FiLM tables) is the core's
``oat_edge.bundle``; its readers are re-exported here for convenience. Checking a bundle on a
device is ``oat_edge.runtime.verify_bundle`` (it runs the runtime's backends).
"""

from oat_edge.bundle import film_vector, load_film_tables, load_manifest, select_entry

__all__ = ["export_bundle", "build_engines", "load_manifest", "select_entry", "film_vector", "load_film_tables",
           "TARGETS"]


def __getattr__(name):
    # Lazy: export_bundle pulls in torch/onnx when called; keep `import oat_edge.export` minimal.
    if name == "export_bundle":
        from oat_edge.export.pipeline import export_bundle

        return export_bundle
    if name == "build_engines":
        from oat_edge.export.targets.tensorrt import build_engines

        return build_engines
    if name == "TARGETS":
        from oat_edge.export.targets import TARGETS

        return TARGETS
    raise AttributeError(f"module 'oat_edge.export' has no attribute {name!r}")
