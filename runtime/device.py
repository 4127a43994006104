"""Which machine the runtime runs on, as a short key: the name of its latency profile.

``device_key(backend, threads)`` names a latency profile: ``BUNDLE/latency/{key}.json`` is
written by ``oat-edge bench`` on a device and read by ``Runtime.select`` on the same kind of
device (the format: ``oat_edge.bundle.latency``). Latency depends on the processor, the
backend and the thread count, so all three are in the key, e.g.
``cpu-intel-xeon-platinum-8375c-onnxruntime-t2`` or ``gpu-nvidia-jetson-orin-tensorrt``.
The machine probes themselves are ``oat_edge.host``. No torch import here.
"""

from __future__ import annotations

from typing import Optional

from oat_edge.host import cpu_name, gpu_name, slug


def device_key(backend_name: str, threads: Optional[int] = None, device: Optional[str] = None) -> str:
    """Key of this machine + backend (+ CPU thread count): the name of the latency profile.

    ``device`` is "cpu" or "cuda[:i]"; default: the backend's default device. The processor or
    GPU model is part of the key because latency is measured there."""
    from oat_edge.runtime.backends import REGISTRY

    backend = slug(backend_name, 24)
    if device is None:
        known = REGISTRY.get(backend_name)
        device = known.default_device if known is not None else "cpu"
    if str(device).startswith("cuda"):
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        key = f"gpu-{slug(gpu_name(index) or 'cuda')}-{backend}"
    else:
        key = f"cpu-{slug(cpu_name())}-{backend}"
        if threads:
            key += f"-t{int(threads)}"
    return key
