"""torch on the CPU or a CUDA GPU (``loader``: ONNX graphs as torch modules; ``runner``:
``TorchRunner`` with CUDA graphs)."""
