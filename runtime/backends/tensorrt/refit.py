"""TensorRT: every held mode at baked speed with refittable engines (issue 12, docs/tensorrt.md).

NOT EXECUTED ON TENSORRT: written against TensorRT 10.x/11.x's documented refit API and run here
only against the stand-ins of tests/trt_standins.py (no GPU on the development machine).

The idea is the ONNX Runtime backend's background baking with engines instead of sessions:
- one engine per width, built with ``BuilderFlag.REFIT`` from a baked graph of that width
  (``oat_edge.runtime.bake.bake_graph``: any mode; the ONNX parser names each weight after its
  ONNX initializer, so the names are the same for every mode of the width);
- two copies of it (``live`` serves frames, ``standby`` is free), each with its own execution
  context;
- ``refit(key, weights)`` — off the hot path — waits until no frame uses the standby copy,
  rewrites its mode-dependent weights (``bake_graph(...).changed``: the convolutions' folded
  weights and biases) with ``trt.Refitter(engine, logger)``, ``set_named_weights`` and
  ``refit_cuda_engine``, and only then swaps the two (one reference store). A frame that
  acquired the old live copy finishes on it; the next refit waits for it.
The caller parity-checks the refitted copy (``check``) before the swap, as the ONNX Runtime
bakery does: TensorRT 11.3's release notes list a REFIT build that can drop a GEMM bias.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Hashable, Optional

import numpy as np

from oat_edge.errors import DeviceError


class _Copy:
    def __init__(self, engine, context):
        self.engine, self.context = engine, context
        self.inflight = 0
        self.key: Optional[Hashable] = None


class ModeRefitter:
    """Two copies of one width's refittable engine; ``acquire``/``release`` around a frame,
    ``refit`` on a worker thread. ``trt`` is the imported ``tensorrt`` module."""

    def __init__(self, trt, plan: bytes, logger=None, key: Optional[Hashable] = None):
        self.trt = trt
        self.logger = logger or trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        copies = []
        for _ in range(2):
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise DeviceError("TensorRT could not deserialise the refittable engine")
            copies.append(_Copy(engine, engine.create_execution_context()))
        self.live, self.standby = copies
        self.live.key = key
        self._lock = threading.Lock()  # inflight counts and the swap
        self._refit_lock = threading.Lock()  # one refit at a time
        self.refits = 0
        self.refit_seconds = 0.0

    @property
    def key(self) -> Optional[Hashable]:
        return self.live.key

    def acquire(self) -> _Copy:
        with self._lock:
            c = self.live
            c.inflight += 1
            return c

    def release(self, c: _Copy) -> None:
        with self._lock:
            c.inflight -= 1

    def refit(self, key: Hashable, weights: Dict[str, np.ndarray],
              check: Optional[Callable[[object, object], bool]] = None, timeout_s: float = 30.0) -> bool:
        """Rewrite the standby copy with ``weights`` (name -> float32 array) and make it live.
        ``check(engine, context)`` may veto the swap (parity); returns whether it swapped."""
        with self._refit_lock:
            target = self.standby
            deadline = time.monotonic() + timeout_s
            while True:  # frames that took this copy while it was live must finish first
                with self._lock:
                    if target.inflight == 0:
                        break
                if time.monotonic() > deadline:
                    raise DeviceError("refit: frames still hold the standby engine after "
                                      f"{timeout_s:g} s; not refitting under them")
                time.sleep(0.0002)
            t0 = time.perf_counter()
            trt = self.trt
            refitter = trt.Refitter(target.engine, self.logger)
            keep = []  # TensorRT reads the host arrays during refit_cuda_engine: keep them alive
            for name, value in weights.items():
                arr = np.ascontiguousarray(value, dtype=np.float32)
                keep.append(arr)
                if not refitter.set_named_weights(name, trt.Weights(arr)):
                    raise DeviceError(f"refit: TensorRT refused the weights {name!r} (unknown name or another size); "
                                      "was the engine built with BuilderFlag.REFIT from this width's graph?")
            missing = list(refitter.get_missing_weights())
            if missing:
                raise DeviceError(f"refit: TensorRT needs weights that were not given: {missing[:8]}")
            if not refitter.refit_cuda_engine():
                raise DeviceError("refit: refit_cuda_engine failed (see the TensorRT log)")
            del keep
            target.key = None
            if check is not None and not check(target.engine, target.context):
                return False
            with self._lock:
                target.key = key
                self.live, self.standby = target, self.live
            self.refits += 1
            self.refit_seconds += time.perf_counter() - t0
            return True
