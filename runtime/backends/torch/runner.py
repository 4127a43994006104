"""torch backend: the bundle's ONNX graphs run by torch on the CPU or a CUDA GPU.

The graphs are interpreted op by op (``onnx_torch``), so torch and onnxruntime execute the same
files. On a GPU each (path, batch) is captured once into a CUDA graph with static input and
output buffers and replayed: a replay is one launch, so switching paths costs nothing and the
per-inference CPU overhead is that of a copy in, a replay and a copy out. Graph replays share
static buffers, so GPU inferences are serialised by one lock (one stream); the copies in and
out run under the same lock, and a (path, batch) met for the first time is captured there.
CUDA tensors passed to ``Runtime.infer`` are copied into the static input on the device (no
host round trip) and the result is returned on the device.

The CUDA part uses torch's documented CUDA-graph API (torch.cuda.CUDAGraph, torch.cuda.graph);
the tests marked ``gpu`` run it where a CUDA device is present.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from oat_edge.errors import ConfigError
from oat_edge.runtime.backends.base import IOSpec, PathSpec, Runner
from oat_edge.runtime.backends.torch.loader import load_path


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, paths: Sequence[PathSpec], io: IOSpec, threads: Optional[int] = None,
                 device: Optional[str] = None, bundle=None, cuda_graphs: bool = True,
                 graph_batches: Optional[Iterable[int]] = None):
        device = device or "cpu"
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"unknown torch device {device!r} (use 'cpu' or 'cuda[:i]')") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU")
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"the torch backend runs on 'cpu' or 'cuda', not {device!r}")
        if threads and dev.type == "cpu":
            torch.set_num_threads(int(threads))  # process-wide: torch has no per-module setting
        super().__init__(paths, io, threads or torch.get_num_threads(), str(dev))
        self._dev = dev
        self._modules = [load_path(p, dev) for p in self.paths]
        self.accepts_cuda = dev.type == "cuda"
        self._use_graphs = bool(cuda_graphs) and dev.type == "cuda"
        self._lock = threading.Lock()
        self._graphs: Dict[Tuple[int, int], "_Graph"] = {}
        if self._use_graphs:
            # Capture the common batch sizes now so the first frames do not pay for it.
            for b in sorted(set(graph_batches or (1, io.batch_opt))):
                if io.batch_min <= b <= io.batch_max:
                    for i in range(len(self.paths)):
                        self._graph(i, b)

    # --- CPU / numpy --------------------------------------------------------------------------------
    def run(self, path_index: int, images: np.ndarray, film: Optional[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(_writable(images))
        if self._dev.type == "cuda":
            # Host -> device copy, replay and device -> host copy all inside run_cuda's lock: no
            # CUDA call of this thread can fall into another thread's graph capture.
            return self.run_cuda(path_index, x, film, to_host=True)
        with torch.inference_mode():
            if film is None:
                out = self._modules[path_index](x)
            else:
                out = self._modules[path_index](x, torch.from_numpy(_writable(film)))
        return out.numpy()

    # --- CUDA tensors ---------------------------------------------------------------------------------
    def run_cuda(self, path_index: int, images: torch.Tensor, film: Optional[np.ndarray],
                 to_host: bool = False):
        """Logits of ``images`` (a CUDA tensor, or a CPU tensor when ``to_host``: then copied in
        here and the result returned as numpy)."""
        if not self._use_graphs:  # eager: no shared buffers, no lock
            with torch.inference_mode():
                x = images.to(self._dev)
                args = (x,) if film is None else (x, torch.from_numpy(_writable(film)).to(self._dev))
                out = self._modules[path_index](*args)
                return out.cpu().numpy() if to_host else out
        with self._lock:
            g = self._graph(path_index, int(images.shape[0]))
            g.images.copy_(images)  # from host memory: synchronous, so `images` may be reused
            if film is not None:
                g.film.copy_(torch.from_numpy(_writable(film)))
            g.graph.replay()
            out = g.logits.clone()  # the static output is overwritten by the next replay
            return out.cpu().numpy() if to_host else out

    def _graph(self, path_index: int, batch: int) -> "_Graph":
        key = (path_index, batch)
        g = self._graphs.get(key)
        if g is None:
            spec = self.paths[path_index]
            g = _Graph(self._modules[path_index], batch, self.io.input_shape, spec.film_size if spec.has_film else 0,
                       self._dev)
            self._graphs[key] = g
        return g

    def open_naive(self, path_id: str) -> Callable[..., np.ndarray]:
        spec = self.path(path_id)
        module = load_path(spec, self._dev)

        def call(images: np.ndarray, film: Optional[np.ndarray] = None) -> np.ndarray:
            with torch.inference_mode():
                x = torch.from_numpy(_writable(np.asarray(images, np.float32))).to(self._dev)
                args = (x,) if not spec.has_film else (x, torch.from_numpy(_writable(film)).to(self._dev))
                return module(*args).cpu().numpy()

        return call

    def describe(self):
        return {**super().describe(), "torch": torch.__version__, "cuda_graphs": self._use_graphs}

    def close(self) -> None:
        self._graphs.clear()
        self._modules = []


class _Graph:
    """One captured CUDA graph of a path at a fixed batch, with its static buffers."""

    def __init__(self, module, batch: int, input_shape, film_size: int, device):
        self.images = torch.zeros((batch,) + tuple(input_shape), dtype=torch.float32, device=device)
        self.film = torch.zeros((film_size,), dtype=torch.float32, device=device) if film_size else None
        args = (self.images,) if self.film is None else (self.images, self.film)
        with torch.no_grad():  # not inference_mode: the static buffers outlive this block
            # Warm up on a side stream (allocator and cuDNN choose kernels) before capture.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    module(*args)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (their own tensors, copies of earlier
            # results) do not invalidate this capture; this runner's own GPU work is held off
            # by its lock.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.logits = module(*args)


def _writable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays; copy those (rare: broadcast views, mmaps)."""
    return a if a.flags.writeable else a.copy()
