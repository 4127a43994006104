"""oat_edge.runtime — run an exported bundle and switch (λ, width) at run time.

    from oat_edge.runtime import Runtime
    rt = Runtime("bundle/", backend="auto")   # onnxruntime on the CPU unless TensorRT fits here
    rt.set_mode(0.25, 0.5)
    logits = rt.infer(images)                 # float32 [batch, C, H, W] in [0, 1]

Needs numpy + onnxruntime only (torch only for the torch backend). The hot-path pieces (mode
register, FiLM computation, budget policy, input check) come from the C++ extension
``oat_edge.runtime._ext`` when it is built, else from an identical pure-Python fallback.
"""

from __future__ import annotations

__all__ = ["Runtime", "device_key", "verify_bundle", "extension_available"]


def __getattr__(name):  # PEP 562: keep `import oat_edge.runtime` (and `oat-edge --help`) light
    if name == "Runtime":
        from oat_edge.runtime.runtime import Runtime

        return Runtime
    if name == "device_key":
        from oat_edge.runtime.device import device_key

        return device_key
    if name == "verify_bundle":
        from oat_edge.runtime.verify import verify_bundle

        return verify_bundle
    raise AttributeError(f"module 'oat_edge.runtime' has no attribute {name!r}")


def extension_available() -> bool:
    """Whether the C++ extension imports (else the pure-Python fallback is used)."""
    from oat_edge.runtime._native import ext_import_error

    return ext_import_error() is None
