"""ONNX Runtime on the CPU: the embedded default (numpy + onnxruntime, no torch).

One InferenceSession per path, all created at load with the same options. Inference uses plain
``session.run`` with numpy inputs: ORT reads CPU numpy buffers in place (no input copy).
Plain ``run`` rather than IOBinding (inputs bound to the numpy buffers, output preallocated):
it was no slower at batch 1, and it keeps each call independent: thread-safe, with no shared
output buffer to copy out of.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np

from oat_edge.errors import BundleError, ConfigError, OatEdgeError
from oat_edge.host import default_threads
from oat_edge.runtime.backends.base import IOSpec, PathSpec, Runner
from oat_edge.runtime.backends.onnxruntime.loader import load_path, open_session, session_options


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, paths: Sequence[PathSpec], io: IOSpec, threads: Optional[int] = None,
                 device: Optional[str] = None, bundle=None, providers=None,
                 path_threads: Optional[Dict[str, int]] = None, spin_wait: bool = False):
        from oat_edge.onnxrt import resolve_providers

        device_id = 0
        if device not in (None, "cpu"):
            if not (providers and str(device).startswith("cuda")):
                raise ConfigError(f"the onnxruntime backend runs on the CPU unless providers name a GPU one "
                                  f"(providers=['cuda'] or ['tensorrt', 'cuda']); device {device!r} is not supported")
            device_id = int(str(device).split(":")[1]) if ":" in str(device) else 0
        threads = int(threads) if threads else default_threads()
        super().__init__(paths, io, threads, "cpu")
        bundle_dir = getattr(bundle, "dir", None)
        hashes = {p.id: p.sha256 for p in self.paths}
        # Inputs and outputs stay numpy on the host; a GPU provider copies them itself.
        self.providers = resolve_providers(providers, bundle_dir, hashes, device_id)
        # spin_wait (backend_options={"spin_wait": True}): onnxruntime's spinning intra-op pools, off
        # by default (oat_edge.onnxrt.session_options says why)
        self.spin_wait = bool(spin_wait)
        self._options = session_options(threads, self.spin_wait)
        # Runtime(threads="tuned"): each path's session with the intra-op count the benchmark
        # found fastest for it (oat_edge.bench.threads); the others with ``threads``.
        self.path_threads = {p.id: int((path_threads or {}).get(p.id, threads)) for p in self.paths}
        options = {threads: self._options}
        for t in set(self.path_threads.values()) - {threads}:
            options[t] = session_options(t, self.spin_wait)
        self._path_options = {pid: options[t] for pid, t in self.path_threads.items()}
        verified = getattr(bundle, "verified", None)
        self._sessions = [load_path(p, io, self._path_options[p.id], self.providers, verified) for p in self.paths]
        self._outputs = [io.logits]

    def run(self, path_index: int, images: np.ndarray, film: Optional[np.ndarray]) -> np.ndarray:
        if film is None:
            feeds = {self.io.images: images}
        else:
            feeds = {self.io.images: images, self.io.film: film}
        try:
            return self._sessions[path_index].run(self._outputs, feeds)[0]
        except Exception as e:  # onnxruntime's own types (Fail, InvalidArgument, RuntimeException)
            if isinstance(e, OatEdgeError) or not type(e).__module__.startswith("onnxruntime"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"path {self.paths[path_index].id} failed in onnxruntime: {first[:300]}") from None

    def open_naive(self, path_id: str) -> Callable[..., np.ndarray]:
        spec = self.path(path_id)
        sess = open_session(spec.file, options=session_options(self.threads, self.spin_wait), providers=self.providers)
        io = self.io

        def call(images: np.ndarray, film: Optional[np.ndarray] = None) -> np.ndarray:
            feeds = {io.images: images}
            if spec.has_film:
                feeds[io.film] = film
            return sess.run([io.logits], feeds)[0]

        return call

    @property
    def supports_baking(self) -> bool:
        # CPU only: a GPU provider (TensorRT EP above all) would compile every baked graph anew.
        names = [p[0] if isinstance(p, (tuple, list)) else p for p in self.providers]
        return names == ["CPUExecutionProvider"]

    def open_baked(self, model_bytes: bytes, label: str, source_path: Optional[str] = None) -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime as ort

        options = self._path_options.get(source_path, self._options)  # the thread count of the path it was baked from
        try:
            sess = ort.InferenceSession(model_bytes, options, providers=self.providers)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"onnxruntime cannot load the baked graph {label}: {first[:300]}") from None
        outputs, images_name = self._outputs, self.io.images

        def run(images: np.ndarray) -> np.ndarray:
            return sess.run(outputs, {images_name: images})[0]

        return run

    def describe(self):
        import onnxruntime as ort

        used = self._sessions[0].get_providers() if self._sessions else [p for p, _ in self.providers]
        tuned = {pid: t for pid, t in self.path_threads.items() if t != self.threads}
        return {**super().describe(), "onnxruntime": ort.__version__, "providers": used,
                **({"path_threads": self.path_threads} if tuned else {}), "spin_wait": self.spin_wait,
                "provider_options": {p: {k: str(v) for k, v in o.items()} for p, o in self.providers}}

    def close(self) -> None:
        self._sessions = []
