"""``Runtime``: run an exported OAT/OATS bundle and switch (λ, width) at run time.

    from oat_edge.runtime import Runtime
    rt = Runtime("bundle/")                 # every path loaded now; onnxruntime on the CPU
    rt.set_mode(0.3, 0.75)                  # O(1): publishes (path, FiLM vector) atomically
    logits = rt.infer(images)               # float32 [batch, C, H, W] in [0, 1]
    mode = rt.select(min_robust_acc=0.4, max_latency_ms=2.0)

``Runtime`` is a facade: ``loading`` opens the bundle and its backend, ``modestate.ModeState``
owns the mode table, FiLM bank, mode register and caches (set_mode and the inference snapshot),
``bake``/``bakery`` bake held modes in the background, ``policy.Selector`` chooses modes.

Threads: ``set_mode``/``select`` may run on a control thread while other threads call
``infer``. Each inference snapshots the published mode once, so it runs wholly in one mode.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from oat_edge.bundle.manifest import load_manifest
from oat_edge.errors import ConfigError
from oat_edge.mode import Mode, check_lambda
from oat_edge.precision import DEFAULT as FP32
from oat_edge.preprocess import preprocess_frames, with_defaults
from oat_edge.runtime import _native, bake as baking, loading
from oat_edge.runtime.bakery import BakeConfig
from oat_edge.runtime.inputs import InputChecker
from oat_edge.runtime.modestate import ModeState
from oat_edge.runtime.policy import Selector

OFFGRID_POLICIES = ("sync", "async")
DEFAULT_RING_SLOTS = 16  # off-grid FiLM buffers: > concurrent inferences + 1 keeps set_mode wait-free


class Runtime:
    """Load a bundle and run it in any (λ, width) mode.

    Args:
        bundle: the bundle folder written by ``oat-edge export``.
        backend: "auto" (TensorRT when usable here, else onnxruntime) or a registered backend
            (``oat_edge.runtime.backends``: "onnxruntime", "torch", "tensorrt").
        threads: CPU threads for inference (onnxruntime intra-op; torch's process-wide count).
            Default: the CPUs this process may use. "tuned" (onnxruntime on the CPU): each path
            with the count ``oat-edge bench --tune-threads`` found fastest for it on this device.
        device: "cpu" or "cuda[:i]" (torch/tensorrt). Default: the backend's natural device.
        mode: the initial (λ, width); default the largest training λ at the widest width.
        verify: check every file's sha256 against the manifest at load (recommended).
        impl: "auto" | "ext" | "python": the C++ extension or its pure-Python twin for the mode
            register, FiLM computation, policy and input check.
        ring_slots: off-grid FiLM buffers (more than the number of concurrent ``infer`` calls).
        backend_options: keyword arguments for the backend's runner (e.g. torch's cuda_graphs).
        providers: onnxruntime execution providers in order of preference: names ("cuda",
            "tensorrt", "cpu" or onnxruntime's full names) or (name, options) pairs. Default: CPU.
        trusted_keys: Ed25519 public keys (PEM files, PEM bytes or key objects) of which one
            must have signed the bundle (``oat-edge sign``); without them an unsigned bundle is
            accepted with an ``UnsignedBundleWarning`` (docs/bundle.md, "Integrity and signatures").
        min_signed_at: with ``trusted_keys``, refuse a bundle signed before this time (seconds
            since 1970 or ISO 8601): an older, validly signed bundle is a rollback.
        bake: background baking (docs/bundle.md, "Baking at run time"): True or a
            ``BakeConfig(capacity=, memory_mb=)``. Every mode set on a BN path is folded into a
            baked graph off the caller's thread and served from it once it passes parity against
            the FiLM path (equal to float rounding, not bit for bit). Needs the onnx package and
            onnxruntime on the CPU or tensorrt with pycuda; elsewhere ``bake_status`` says why it is off.
        offgrid: how ``set_mode`` treats a λ off the FiLM grid (docs/bundle.md, "Off-grid λ"):
            "sync" (default) computes the exact FiLM vector inside the call; "async" queues it for
            a worker thread, and inferences run in the previous mode until it is live (``wait_mode``).
    """

    def __init__(self, bundle, backend: str = "auto", threads: Union[int, str, None] = None, device: Optional[str] = None,
                 *, mode: Optional[Tuple[float, float]] = None, verify: bool = True, impl: str = "auto",
                 ring_slots: int = DEFAULT_RING_SLOTS, backend_options: Optional[dict] = None,
                 trusted_keys=None, providers=None, bake: Union[bool, BakeConfig] = False, offgrid: str = "sync",
                 min_signed_at=None):
        if offgrid not in OFFGRID_POLICIES:
            raise ConfigError(f"offgrid must be one of {', '.join(OFFGRID_POLICIES)}, got {offgrid!r}")
        if isinstance(ring_slots, bool) or not isinstance(ring_slots, int) or not 3 <= ring_slots <= 65535:
            raise ConfigError(f"ring_slots must be an integer in [3, 65535], got {ring_slots!r}")
        self._closed = False
        threads, tuned = loading.check_threads(threads)
        self.bundle_dir = Path(bundle)
        # The verified bytes of every file: sessions and tables are built from them (a path swapped
        # after verification is never read); dropped once the runtime is built.
        verified: Dict[str, bytes] = {}
        self.manifest = m = load_manifest(self.bundle_dir, verify_hashes=verify, trusted_keys=trusted_keys,
                                          keep=verified, min_signed_at=min_signed_at)
        loading.warn_if_unsigned(self.bundle_dir, trusted_keys)
        self._impl = _native.load(impl)
        self.impl = _native.impl_name(self._impl)
        self.io = loading.bundle_io(m)
        self.input_shape: Tuple[int, ...] = self.io.input_shape
        self.num_classes = self.io.num_classes
        self.train_lambdas: List[float] = [float(x) for x in m["model"]["train_lambdas"]]
        paths, table = loading.bundle_paths(m, self.bundle_dir)
        film = loading.load_film_bank(m, self.bundle_dir, self._impl, ring_slots, verified, paths)
        self._checker = InputChecker(self.input_shape, self.io.batch_min, self.io.batch_max, self._impl.in_unit_range)
        self.backend_requested = backend
        opened = loading.BackendOpener(m, self.bundle_dir, self.io, verified, bool(trusted_keys)).open(
            paths, table, self._impl if self.impl == "ext" else None, backend, threads, tuned, device, providers,
            backend_options)
        self.backend, self.backend_name, self.backend_reason = opened.runner, opened.name, opened.reason
        self.device, self.threads, self.device_key = self.backend.device, self.backend.threads, opened.device_key
        self._modes = ModeState(opened.paths, opened.table, film, self._impl, ring_slots)
        self.widths: List[float] = self._modes.widths
        # set_mode is the mode state's own method: the facade adds no call to its µs fast path.
        self.set_mode = self._modes.set_mode
        self._selector = Selector(self._modes, self.backend, self.io, m.get("calibration"), opened.latency_profile,
                                  self._impl)
        self.bake_status = "off"
        self._baker = baking.ModeBaker(self._modes, self.backend, self.io.film)
        if bake:
            self._modes.bakery, self.bake_status = baking.start_bakery(
                self._baker, self.backend_name, bake if isinstance(bake, BakeConfig) else BakeConfig(),
                lambda: baking.parity_images(m, self.bundle_dir, self.input_shape, verified), self.io.batch_max)
            if self._modes.bakery is not None:
                weakref.finalize(self, self._modes.bakery.close)
        self.offgrid = offgrid
        lam0, w0 = mode if mode is not None else (max(self.train_lambdas), max(self.widths))
        self.set_mode(lam0, w0)  # (synchronous: the runtime starts in the mode asked for)
        if offgrid == "async":
            weakref.finalize(self, self._modes.start_offgrid().close)

    # --- modes --------------------------------------------------------------------------------
    def set_mode(self, lam, width=None, precision: Optional[str] = None) -> None:
        """Switch to mode (λ, width, precision), or ``set_mode(mode)`` with a Mode. ``precision``:
        "fp32" (default), "fp16" or "int8", the bundle's file of that precision. A grid or baked
        λ is O(1), no allocation: it publishes a preloaded path and FiLM buffer. An off-grid λ
        under ``offgrid="sync"`` first computes its FiLM vector inside this call (what the FiLM
        generators cost); under ``offgrid="async"`` a worker computes it and the call returns
        before the mode is live (``wait_mode()``). ModeError for λ outside [0, 1] or NaN, an
        untrained width, or a precision the bundle (or this backend) lacks for the mode."""
        self._modes.set_mode(lam, width, precision)

    def wait_mode(self, timeout: Optional[float] = None) -> bool:
        """Block until the last ``set_mode`` is live (True) or ``timeout`` seconds pass (False)."""
        return self._modes.wait_mode(timeout)

    @property
    def mode_pending(self) -> bool:
        """Whether an asynchronous off-grid ``set_mode`` is not live yet (``offgrid="async"``)."""
        return self._modes.mode_pending

    def offgrid_stats(self) -> dict:
        """Counters of asynchronous off-grid switches and the set_mode → live time (p50/p99 ms)."""
        return {"policy": self.offgrid, **self._modes.offgrid_stats()}

    @property
    def mode(self) -> Mode:
        """The mode the next inference will run in."""
        return self._modes.mode

    @property
    def precisions(self) -> List[str]:
        """The precisions this runtime can run (those of the bundle's files its backend runs)."""
        return list(self._modes.table.precisions)

    @property
    def modes(self) -> List[Mode]:
        """The modes of the calibration (or every FiLM-grid λ × width), at every precision here."""
        return self._selector.modes()

    def path_for(self, lam, width, precision: str = FP32) -> str:
        """Id of the path a mode runs on (a baked path or the BN path of its width)."""
        return self._modes.path_for(lam, width, precision)

    def film_vector(self, lam, width) -> np.ndarray:
        """A copy of the flat FiLM vector of (λ, width) (what its BN path is fed)."""
        return self._modes.film_vector(lam, width)

    # --- inference ----------------------------------------------------------------------------
    def infer(self, images):
        """Logits [batch, num_classes] of the current mode. numpy in → numpy out; a torch tensor
        in → a torch tensor out on the same device (CUDA tensors stay on the GPU with the torch
        and tensorrt backends)."""
        return self._infer(images)[0]

    def infer_with_mode(self, images):
        """(logits, Mode): the mode this very inference ran in."""
        out, lam, wi, path = self._infer(images)
        return out, self._modes.mode_of(lam, wi, path)

    def _infer(self, images):
        x, cuda, to_torch = self._checker.check(images, self.backend.accepts_cuda)
        self._check_open()
        try:
            result = self._modes.run_cuda(self.backend, x) if cuda else self._modes.run(self.backend, x)
        except Exception:
            self._check_open()  # closed meanwhile: say so, not the backend's error
            raise
        if to_torch is not None:
            import torch

            result = (torch.from_numpy(result[0]).to(to_torch),) + result[1:]
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"this Runtime of {self.bundle_dir} is closed; make a new one")

    @property
    def preprocessing(self) -> dict:
        """The bundle's raw → input transform with every missing field at its documented default."""
        return with_defaults(self.manifest.get("preprocessing"), self.input_shape[0])

    @property
    def class_names(self) -> Optional[List[str]]:
        return self.preprocessing.get("class_names")

    def preprocess(self, frames, color: str = "bgr") -> np.ndarray:
        """Camera frames -> the float32 [N, C, H, W] batch ``infer`` takes, by the bundle's
        preprocessing contract (``oat_edge.preprocess.preprocess_frames``)."""
        return preprocess_frames(frames, self.preprocessing, self.input_shape[1:], color)

    def infer_frames(self, frames, color: str = "bgr") -> np.ndarray:
        """Logits [N, num_classes] for raw camera frames in the current mode: ``preprocess``
        then ``infer``, split into batches the bundle's profile allows."""
        x = self.preprocess(frames, color)
        step = self.io.batch_max
        if x.shape[0] <= step:
            return self.infer(x)
        return np.concatenate([self.infer(x[i: i + step]) for i in range(0, x.shape[0], step)])

    # --- selection (runtime/policy.py) --------------------------------------------------------
    def select(self, min_robust_acc: Optional[float] = None, min_clean_acc: Optional[float] = None,
               max_latency_ms: Optional[float] = None, prefer: str = "robust", batch: int = 1,
               attack: Optional[str] = None, latency_quantile: str = "p99") -> Mode:
        """The calibrated mode that meets the budgets and is best by ``prefer`` ("robust",
        "accurate", "fast"); accuracies at their 95 % Wilson lower bound, ``max_latency_ms``
        bounding this device's ``latency_quantile`` latency at ``batch`` (the rule:
        runtime/policy.py). ModeError naming the closest modes when nothing fits. Does not
        switch: call ``set_mode(mode)`` with the result."""
        return self._selector.select(min_robust_acc, min_clean_acc, max_latency_ms, prefer, batch, attack,
                                     latency_quantile)

    def latency_ms(self, lam, width, batch: int = 1, precision: str = FP32, quantile: str = "p50") -> float:
        """The ``quantile`` latency (ms) of a mode at ``batch`` here: profile or quick measurement."""
        return self._selector.latency_ms(lam, width, batch, precision, quantile)

    @property
    def calibrated(self) -> bool:
        return self._selector.calibrated

    # --- background baking (runtime/bake.py, runtime/bakery.py) -------------------------------
    def bake(self, lam, width=None, precision: Optional[str] = None) -> bool:
        """Bake mode (λ, width, precision) now, on the calling thread, unless it is cached or
        baking is off; True when it is cached afterwards (prewarming)."""
        return self._modes.bake_now(lam, width, precision)

    def wait_baked(self, lam, width, timeout: Optional[float] = None, precision: Optional[str] = None) -> bool:
        """Block until (λ, width, precision) runs on a baked graph, exported or baked here (True),
        or until its bake failed or ``timeout`` seconds passed (False)."""
        return self._modes.wait_baked(lam, width, timeout, precision)

    def baked_now(self) -> bool:
        """Whether the current mode is served by a baked graph (exported or baked at run time)."""
        return self._modes.baked_now()

    def bake_stats(self) -> dict:
        """Counters of background baking (requests, hits, bakes, evictions, failures, times)."""
        bakery = self._modes.bakery
        return {"status": self.bake_status} if bakery is None else {"status": self.bake_status, **bakery.stats()}

    def baked_onnx(self, lam, width) -> bytes:
        """The ONNX model (serialised) of mode (λ, width) folded now from its BN path, the graph a
        bake serves (inputs minus ``film``); baking need not be on."""
        lam, wi = check_lambda(lam), self._modes.width_index(width)
        baking.require_onnx()
        return self._baker.graph(lam, wi, self._modes.film_path_index(lam, wi)).to_bytes()

    # --- misc ---------------------------------------------------------------------------------
    @property
    def paths(self):
        return list(self._modes.paths)

    def describe(self) -> dict:
        return {"bundle": str(self.bundle_dir), "backend": self.backend_name, "backend_reason": self.backend_reason,
                "device": self.device, "device_key": self.device_key, "threads": self.threads, "impl": self.impl,
                "widths": self.widths, "input_shape": list(self.input_shape), "batch": [self.io.batch_min, self.io.batch_max],
                "paths": [p.id for p in self._modes.paths], "calibrated": self.calibrated,
                "latency_profile": (self._selector.latency_profile or {}).get("file"), "mode": str(self.mode),
                "bake": self.bake_status, "offgrid": self.offgrid}

    def close(self) -> None:
        self._closed = True  # first: an infer racing with close gets the closed error
        self._modes.close()
        self.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runtime({str(self.bundle_dir)!r}, backend={self.backend_name!r}, mode={self.mode})"
