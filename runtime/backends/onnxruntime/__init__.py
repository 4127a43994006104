"""ONNX Runtime on the CPU (``loader``: sessions; ``runner``: ``OnnxRuntimeRunner``)."""
