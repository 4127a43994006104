"""OpenVINO on the CPU: one compiled model per path, all compiled at load with the same
settings (fp32 inference precision, latency hint by default, the runtime's thread count).

A compiled model is shared by every thread; an infer request is not, so each thread gets its
own request per path on first use (``threading.local``): concurrent ``infer`` calls never share
one. Outputs are copied out of the request, so a later call cannot overwrite an earlier result.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

import numpy as np

from oat_edge.errors import BundleError, ConfigError
from oat_edge.host import default_threads
from oat_edge.runtime.backends.base import IOSpec, PathSpec, Runner
from oat_edge.runtime.backends.openvino.loader import compile_bytes, config, load_path


class OpenVINORunner(Runner):
    name = "openvino"

    def __init__(self, paths: Sequence[PathSpec], io: IOSpec, threads: Optional[int] = None,
                 device: Optional[str] = None, bundle=None, hint: str = "latency"):
        if device not in (None, "cpu"):
            raise ConfigError(f"the openvino backend runs on the CPU; device {device!r} is not supported")
        threads = int(threads) if threads else default_threads()
        super().__init__(paths, io, threads, "cpu")
        self.hint = hint
        self._settings = config(threads, hint)
        verified = getattr(bundle, "verified", None)
        self._compiled = [load_path(p, io, self._settings, verified) for p in self.paths]
        self._local = threading.local()

    def _request(self, path_index: int):
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        req = requests.get(path_index)
        if req is None:
            req = requests[path_index] = self._compiled[path_index].create_infer_request()
        return req

    def run(self, path_index: int, images: np.ndarray, film: Optional[np.ndarray]) -> np.ndarray:
        feeds = {self.io.images: images} if film is None else {self.io.images: images, self.io.film: film}
        try:
            out = self._request(path_index).infer(feeds)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"path {self.paths[path_index].id} failed in openvino: {first[:300]}") from None
        return np.array(out[self.io.logits], dtype=np.float32, copy=True)

    def open_naive(self, path_id: str) -> Callable[..., np.ndarray]:
        spec = self.path(path_id)
        req = load_path(spec, self.io, self._settings).create_infer_request()
        io = self.io

        def call(images: np.ndarray, film: Optional[np.ndarray] = None) -> np.ndarray:
            feeds = {io.images: images, io.film: film} if spec.has_film else {io.images: images}
            return np.array(req.infer(feeds)[io.logits], copy=True)

        return call

    supports_baking = True

    def open_baked(self, model_bytes: bytes, label: str, source_path: Optional[str] = None) -> Callable[[np.ndarray], np.ndarray]:
        compiled = compile_bytes(model_bytes, self._settings, f"the baked graph {label}")
        local, images_name, logits = threading.local(), self.io.images, self.io.logits

        def run(images: np.ndarray) -> np.ndarray:
            req = getattr(local, "req", None)
            if req is None:
                req = local.req = compiled.create_infer_request()
            return np.array(req.infer({images_name: images})[logits], copy=True)

        return run

    def describe(self):
        import openvino as ov

        return {**super().describe(), "openvino": ov.__version__, "hint": self.hint, "settings": dict(self._settings)}

    def close(self) -> None:
        self._compiled = []
        self._local = threading.local()
