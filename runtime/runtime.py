"""``Runtime``: run an exported OAT/OATS bundle and switch (λ, width) at run time.

    from oat_edge.runtime import Runtime
    rt = Runtime("bundle/")                 # every path loaded now; onnxruntime on the CPU
    rt.set_mode(0.3, 0.75)                  # O(1): publishes (path, FiLM vector) atomically
    logits = rt.infer(images)               # float32 [batch, C, H, W] in [0, 1]
    mode = rt.select(min_robust_acc=0.4, max_latency_ms=2.0)

How a mode runs (docs/bundle.md "Modes → files"): a baked path when the bundle has one for
exactly that mode, else the BN path of the width (BN_c for λ = 0, BN_a otherwise) fed with the
mode's flat FiLM vector — a row of the preloaded table for λ on the grid, or computed exactly
into a preallocated ring buffer for any other λ.

Threads: ``set_mode``/``select`` may run on a control thread while other threads call
``infer``. Each inference snapshots the published mode once (path + FiLM buffer, pinned until it
finishes), so it runs wholly in one mode; a ring buffer is never rewritten while pinned.
"""

from __future__ import annotations

import math
import posixpath
import threading
import time
import weakref
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from oat_edge.bundle.latency import profile_latency, read_latency_profile
from oat_edge.bundle.manifest import load_manifest
from oat_edge.bundle.film import GRID_TOL
from oat_edge.bundle.modes import ModeTable
from oat_edge.errors import BundleError, ConfigError, InputError, ModeError, OatEdgeError
from oat_edge.mode import Mode, bn_branch, check_lambda, fmt_width
from oat_edge.precision import DEFAULT as FP32, check_precision, entry_precision
from oat_edge.runtime import _native, policy
from oat_edge.runtime import backends as registry
from oat_edge.runtime.backends.base import BundleContext, IOSpec, PathSpec
from oat_edge.runtime.bakery import BakeConfig, BakedModeGone, Bakery
from oat_edge.runtime.device import device_key
from oat_edge.runtime.film import FilmBank, OffGridWorker
from oat_edge.runtime.inputs import InputChecker, is_torch_tensor

# Backends that run the reduced-precision (fp16 / int8 QDQ) files as they are; the others run
# a bundle's fp32 files only (TensorRT engines are built from those; the torch backend's ONNX
# interpreter has no QuantizeLinear/DequantizeLinear).
REDUCED_PRECISION_BACKENDS = ("onnxruntime",)
OFFGRID_POLICIES = ("sync", "async")
SWITCH_CACHE_SIZE = 4096  # grid/baked modes remembered by set_mode's fast path
DEFAULT_RING_SLOTS = 16  # off-grid FiLM buffers: > concurrent inferences + 1 keeps set_mode wait-free
MEASURE_RUNS = 25  # quick latency measurement per path when the bundle has no profile for this device


def bundle_io(m: dict, bundle_dir: Path) -> IOSpec:
    """The manifest's tensor names, input shape, classes and batch range."""
    try:
        model, io, batch = m["model"], m["io"], m["batch"]
        return IOSpec(images=io["images"]["name"], film=io["film"]["name"], logits=io["logits"]["name"],
                      input_shape=tuple(int(v) for v in model["input_shape"]), num_classes=int(model["num_classes"]),
                      batch_min=int(batch["min"]), batch_opt=int(batch.get("opt", batch["min"])),
                      batch_max=int(batch["max"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{bundle_dir}/manifest.json is missing or has a malformed field: {e}") from None


def bundle_paths(m: dict, bundle_dir: Path, precisions=None) -> Tuple[List[PathSpec], ModeTable]:
    """Every path and baked path as the runners see them (paths first, in manifest order), and
    the mode -> path table over their indices; only those of ``precisions`` when given."""
    paths: List[PathSpec] = []
    try:
        table = ModeTable(m["model"]["widths"])
        widths = table.widths
        for e in m["paths"]:
            prec = entry_precision(e)
            if precisions is not None and prec not in precisions:
                continue
            wi = table.add_path(e["bn"], e["width"], len(paths), f"path {e['id']}", prec)
            paths.append(PathSpec(len(paths), e["id"], bundle_dir / e["file"], "film", e["bn"], widths[wi], None,
                                  int(e["film_size"]), e.get("sha256", ""), tuple(e.get("ops", ())), prec))
        for e in m.get("baked") or []:
            prec = entry_precision(e)
            if precisions is not None and prec not in precisions:
                continue
            lam, wi = table.add_baked(e["lam"], e["width"], len(paths), f"baked path {e['id']}", prec)
            paths.append(PathSpec(len(paths), e["id"], bundle_dir / e["file"], "baked", e.get("bn", bn_branch(lam)),
                                  widths[wi], lam, 0, e.get("sha256", ""), tuple(e.get("ops", ())), prec))
    except (KeyError, TypeError, ValueError) as e:  # (a bad λ is a ModeError, a ValueError too)
        raise BundleError(f"{bundle_dir}/manifest.json has a malformed path entry: {e}") from None
    return paths, table


def verified_onnx(m: dict, bundle_dir: Path, verified: Dict[str, bytes]) -> Dict[Path, tuple]:
    """BundleContext.verified: each ONNX file's verified bytes and its external data's, keyed by
    the file's path; empty when nothing was verified."""
    out: Dict[Path, tuple] = {}
    for e in list(m.get("paths") or []) + list(m.get("baked") or []):
        if e.get("file") not in verified:
            continue
        folder = PurePosixPath(e["file"]).parent
        external = [(posixpath.relpath(x["file"], str(folder)), verified[x["file"]])
                    for x in e.get("external_data") or [] if x.get("file") in verified]
        out[bundle_dir / e["file"]] = (verified[e["file"]], external)
    return out


def _warn_if_unsigned(bundle_dir: Path, trusted_keys) -> None:
    """One warning line when an unsigned bundle is accepted (only possible without trusted keys)."""
    import warnings

    from oat_edge.bundle.names import SIGNATURE_FILE
    from oat_edge.bundle.signature import UnsignedBundleWarning

    if not trusted_keys and not (bundle_dir / SIGNATURE_FILE).exists():
        warnings.warn(f"bundle {bundle_dir} is unsigned: its sha256 values catch corruption, not tampering "
                      "(sign it with `oat-edge sign` and load it with trusted_keys)", UnsignedBundleWarning, stacklevel=3)


class Runtime:
    """Load a bundle and run it in any (λ, width) mode. See the module docstring.

    Args:
        bundle: the bundle folder written by ``oat-edge export``.
        backend: "auto" (TensorRT when usable here, else onnxruntime) or a registered backend
            (``oat_edge.runtime.backends``: "onnxruntime", "torch", "tensorrt").
        threads: CPU threads for inference (onnxruntime intra-op; torch's process-wide count).
            Default: the CPUs this process may use. "tuned" (onnxruntime on the CPU): each path
            with the count ``oat-edge bench --tune-threads`` found fastest for it on this device
            (latency profile ``path_threads``), at the batch nearest the bundle's ``batch.opt``.
        device: "cpu" or "cuda[:i]" (torch/tensorrt). Default: the backend's natural device.
        mode: the initial (λ, width); default the largest training λ at the widest width.
        verify: check every file's sha256 against the manifest at load (recommended).
        impl: "auto" | "ext" | "python": the C++ extension or its pure-Python twin for the mode
            register, FiLM computation, policy and input check (tests use both).
        ring_slots: off-grid FiLM buffers (more than the number of concurrent ``infer`` calls).
        backend_options: keyword arguments for the backend's runner (e.g. torch's cuda_graphs).
        providers: onnxruntime execution providers in order of preference (backend "onnxruntime"):
            names ("cuda", "tensorrt", "cpu" or onnxruntime's full names) or (name, options) pairs;
            the TensorRT EP caches its engines in the bundle's engines/onnxruntime-trt/ folder.
            Default: the CPU provider (oat_edge.onnxrt.resolve_providers).
        trusted_keys: Ed25519 public keys (PEM files, PEM bytes or key objects) of which one
            must have signed the bundle (``oat-edge sign``); without them an unsigned bundle is
            accepted with an ``UnsignedBundleWarning`` (docs/bundle.md, "Integrity and signatures").
        min_signed_at: with ``trusted_keys``, refuse a bundle signed before this time (seconds
            since 1970 or ISO 8601, e.g. "2026-12-01"): an older, validly signed bundle copied
            back onto the robot is a rollback, not an update.
        bake: background baking (docs/bundle.md, "Baking at run time"): True or a
            ``BakeConfig(capacity=, memory_mb=)``. Every mode set on a BN path is folded into a
            baked graph off the caller's thread and, once it passes parity against the FiLM
            path, served from it; set_mode stays a wait-free publish. Off by default: baked
            logits equal the FiLM path's to float rounding (≤ the parity tolerance), not bit
            for bit. Needs the onnx package and a backend that can bake: onnxruntime on the
            CPU (a session per baked mode) or tensorrt with pycuda (one refittable engine per
            width, refitted per mode; host-array frames only, never executed on TensorRT);
            elsewhere ``bake_status`` says why it is off.
        offgrid: how ``set_mode`` treats a λ off the FiLM grid (docs/bundle.md, "Off-grid λ").
            "sync" (default): the exact FiLM vector is computed inside the call, which returns
            with the mode live (tens of µs on small models, milliseconds on ResNet-34).
            "async": the call only queues the request (µs, the same whatever the model); a worker
            thread computes the same exact vector and publishes it. Until then inferences run
            in the previous mode (``rt.mode`` and ``infer_with_mode`` say which);
            ``wait_mode()`` blocks until it is live; a later ``set_mode`` supersedes it. Grid
            and baked modes are published at once under both policies.
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
        tuned = threads == "tuned"
        if tuned:
            threads = None
        elif threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive integer, \"tuned\" or None (all CPUs), got {threads!r}")
        self.bundle_dir = Path(bundle)
        # The verified bytes of every file: sessions and tables are built from them (a path swapped
        # after verification is never read); dropped once the runtime is built.
        verified: Dict[str, bytes] = {}
        self.manifest = load_manifest(self.bundle_dir, verify_hashes=verify, trusted_keys=trusted_keys, keep=verified,
                                      min_signed_at=min_signed_at)
        self._verified = verified
        self._signed_profiles_only = bool(trusted_keys)
        _warn_if_unsigned(self.bundle_dir, trusted_keys)
        self._impl = _native.load(impl)
        self.impl = _native.impl_name(self._impl)
        m = self.manifest
        self.io = bundle_io(m, self.bundle_dir)
        try:
            self.widths: List[float] = [float(w) for w in m["model"]["widths"]]
            self.train_lambdas: List[float] = [float(x) for x in m["model"]["train_lambdas"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{self.bundle_dir}/manifest.json is missing or has a malformed field: {e}") from None
        self.input_shape: Tuple[int, ...] = self.io.input_shape
        self.num_classes = self.io.num_classes
        self._paths, self._table = bundle_paths(m, self.bundle_dir)

        film = m["film"]
        sizes = {float(k): int(v) for k, v in (film.get("sizes") or {}).items()}
        self._film = FilmBank(self.bundle_dir / film["file"], self.widths, sizes, float(film["negative_slope"]),
                              self._impl, ring_slots, data=verified.get(film["file"]))
        if self._film.file_slope is not None and self._film.file_slope != float(film["negative_slope"]):
            # film.npz is hashed (and the hash signed); a manifest value that disagrees was edited.
            raise BundleError(f"{self.bundle_dir}/manifest.json: film.negative_slope {film['negative_slope']!r} differs from "
                              f"film.npz's {self._film.file_slope!r}; the manifest was altered, re-export the bundle")
        if self._film.encoding != film.get("lambda_encoding", "ro"):
            raise BundleError(f"{self.bundle_dir}/manifest.json: film.lambda_encoding {film.get('lambda_encoding', 'ro')!r} "
                              f"differs from film.npz's {self._film.encoding!r}; the manifest was altered, re-export the bundle")
        for p in self._paths:
            if p.has_film and p.film_size != self._film.sizes[self._wi(p.width)]:
                raise BundleError(f"path {p.id} takes a FiLM vector of size {p.film_size}, film.npz has "
                                  f"{self._film.sizes[self._wi(p.width)]} for width {fmt_width(p.width)}")
        self._views = self._film.views
        self._reg = self._impl.ModeRegister(ring_slots, self._film.ring, self._film.ring_base, len(self.widths),
                                            self._film.computer)
        self._checker = InputChecker(self.input_shape, self.io.batch_min, self.io.batch_max, self._impl.in_unit_range)

        self.backend_requested = backend
        if providers is not None:
            if backend == "auto":
                backend = "onnxruntime"  # execution providers are onnxruntime's
            elif backend != "onnxruntime":
                raise ConfigError(f"providers apply to the onnxruntime backend, not {backend!r}")
            backend_options = {**dict(backend_options or {}), "providers": providers}
        context = BundleContext(m, self.bundle_dir, self._impl if self.impl == "ext" else None,
                                verified_onnx(m, self.bundle_dir, verified))
        fp32_paths = [p for p in self._paths if p.precision == FP32]
        self.backend_name, self.backend_reason = registry.choose_backend(
            backend, device, lambda b: b.loader().auto_check(context, fp32_paths))
        if self.backend_name not in REDUCED_PRECISION_BACKENDS and len(fp32_paths) < len(self._paths):
            self._paths, self._table = bundle_paths(m, self.bundle_dir, (FP32,))
            self.backend_reason = (self.backend_reason + "; " if self.backend_reason else "") + \
                f"fp32 files only ({self.backend_name} does not run the bundle's fp16/int8 files)"
        if tuned:
            backend_options = self._tuned_threads(backend_options)
        cls = registry.runner_class(self.backend_name)
        self.backend = cls(self._paths, self.io, threads=threads, device=device, bundle=context,
                           **dict(backend_options or {}))
        self.device = self.backend.device
        self.threads = self.backend.threads
        self.device_key = device_key(self.backend_name, self.threads if self.device == "cpu" else None, self.device)
        accelerators = [p for p, _ in getattr(self.backend, "providers", []) if p != "CPUExecutionProvider"]
        if accelerators:  # latency on a GPU provider is not the CPU's: its own profile
            self.device_key += "-" + "-".join(p.replace("ExecutionProvider", "").lower() for p in accelerators)
        self._latency_profile = self._read_profile(self.device_key)
        self._measured: Dict[Tuple[int, int], float] = {}
        self._measure_lock = threading.Lock()
        self._candidate_cache: Dict[tuple, Tuple[List[policy.Candidate], bool]] = {}

        self._switch_cache: Dict[tuple, tuple] = {}  # set_mode arguments -> publish arguments (grid and baked modes)
        self._offgrid_widths: Dict[tuple, tuple] = {}  # (width, precision) arguments -> BN_a path (async off-grid)
        self._bakery: Optional[Bakery] = None
        self._bake_sources: Dict[int, object] = {}  # BN path index -> its parsed ONNX, for baking
        self.bake_status = "off"
        if bake:
            self._start_bakery(bake if isinstance(bake, BakeConfig) else BakeConfig())

        self.offgrid = offgrid
        self._offgrid: Optional[OffGridWorker] = None
        lam0, w0 = mode if mode is not None else (max(self.train_lambdas), max(self.widths))
        self.set_mode(lam0, w0)  # (synchronous: the runtime starts in the mode asked for)
        if offgrid == "async":
            bakery = self._bakery
            on_live = None if bakery is None else (lambda lam, wi, index: bakery.request((index, lam, wi), lam, wi, index))
            self._offgrid = OffGridWorker(self._film, self._reg, on_live)
            weakref.finalize(self, self._offgrid.close)
        self._verified = {}
        context.verified.clear()

    def _read_profile(self, key: str) -> Optional[dict]:
        """This device's latency profile; with trusted keys only one the signature covers, read
        from the bytes that were verified (an unsigned profile could steer ``select``)."""
        if not self._signed_profiles_only:
            return read_latency_profile(self.bundle_dir, key)
        data = self._verified.get(f"latency/{key}.json")
        return None if data is None else read_latency_profile(self.bundle_dir, key, data=data)

    def _tuned_threads(self, backend_options: Optional[dict]) -> Optional[dict]:
        """threads="tuned": per-path intra-op counts from this device's latency profile
        (``oat-edge bench --tune-threads``), each path's best at the batch nearest the bundle's
        ``batch.opt``; without them every path gets all CPUs and ``backend_reason`` says why."""
        from oat_edge.host import default_threads

        def why(msg: str) -> Optional[dict]:
            self.backend_reason = (self.backend_reason + "; " if self.backend_reason else "") + f'threads="tuned": {msg}'
            return backend_options

        if self.backend_name != "onnxruntime" or (backend_options or {}).get("providers"):
            return why("per-path thread counts apply to onnxruntime on the CPU; using the default")
        # The tuning covers every count, whatever --threads the bench ran with: take the profile
        # of this CPU's default count first, else any of this CPU's onnxruntime profiles.
        base = device_key("onnxruntime", None, "cpu")
        keys = [device_key("onnxruntime", default_threads(), "cpu")]
        keys += sorted(p.stem for p in (self.bundle_dir / "latency").glob(f"{base}-t*.json") if p.stem not in keys)
        table, key = None, keys[0]
        for k in keys:
            table = (self._read_profile(k) or {}).get("path_threads")
            if isinstance(table, dict) and table:
                key = k
                break
        if not isinstance(table, dict) or not table:
            return why(f"no tuned thread counts for {base} (run `oat-edge bench --tune-threads` here); using all CPUs")
        chosen: Dict[str, int] = {}
        cpus = default_threads()
        for pid, by_batch in table.items():
            try:
                pairs = sorted((abs(int(b) - self.io.batch_opt), -int(b), int(t)) for b, t in dict(by_batch).items())
            except (TypeError, ValueError, AttributeError):
                raise BundleError(f"latency profile {key}: path_threads of {pid!r} is malformed; rerun the bench") from None
            if pairs and pairs[0][2] >= 1:  # never more threads than this process has CPUs (the file is unsigned)
                chosen[str(pid)] = min(pairs[0][2], cpus)
        return {**dict(backend_options or {}), "path_threads": chosen}

    # --- background baking (oat_edge.runtime.bakery) -------------------------------------------
    def _start_bakery(self, config: BakeConfig) -> None:
        from oat_edge.runtime import bake as bake_mod

        if not self.backend.supports_baking:
            self.bake_status = (f"off: the {self.backend_name} backend cannot bake modes here (onnxruntime on "
                                "the CPU execution provider can; tensorrt can with pycuda, by engine refit)")
            return
        try:
            bake_mod.require_onnx()
        except OatEdgeError as e:
            self.bake_status = f"off: {e}"
            return
        images, tol = self._parity_images()
        # The worker holds the Runtime weakly, so an unclosed Runtime is still collected (and its
        # worker stopped by the finalizer below).
        me = weakref.ref(self)

        def bake_fn(key, lam: float, wi: int, index: int):
            rt = me()
            if rt is None:
                raise BundleError("the Runtime was closed")
            return rt._bake_path(lam, wi, index, key)

        def film_run(index: int, x: np.ndarray, lam: float, wi: int) -> np.ndarray:
            rt = me()
            if rt is None:
                raise BundleError("the Runtime was closed")
            return rt.backend.run(index, x, rt._film.vector(lam, wi))

        def held():
            rt = me()
            if rt is None:
                return None
            _gen, path, film_id, lam, wi = rt._reg.current()
            return rt._bake_key(lam, wi, film_id, path) if film_id >= 0 else None

        self._bakery = Bakery(bake_fn, film_run, images, tol, config, self.io.batch_max, held)
        weakref.finalize(self, self._bakery.close)
        self.bake_status = "on"

    def _bake_path(self, lam: float, wi: int, index: int, key=None):
        """(run, bytes, info): mode (λ, width) folded into BN path ``index`` and opened on the
        backend (oat_edge.runtime.bake; numpy + onnx) as cache entry ``key`` (None: a one-off
        graph outside the cache, onnxruntime only)."""
        spec = self._paths[index]
        baked = self._baked_graph(lam, wi, index)
        label = f"{spec.id} at λ={lam:g}"
        if key is None:
            data = baked.to_bytes()
            run, nbytes, info = self.backend.open_baked(data, label, spec.id), len(data), {}
        else:
            run, nbytes, info = self.backend.bake_mode(baked, key, label, spec.id)
        return run, nbytes, {"path": spec.id, "folded_sites": baked.folded_sites, "kept_ops": baked.kept_ops, **info}

    def _baked_graph(self, lam: float, wi: int, index: int):
        """Mode (λ, width) folded into BN path ``index`` (oat_edge.runtime.bake: numpy + onnx)."""
        from oat_edge.runtime import bake as bake_mod

        spec = self._paths[index]
        source = self._bake_sources.get(index)
        if source is None:
            source = self._bake_sources[index] = bake_mod.load_path_model(spec.file, spec.sha256)
        return bake_mod.bake_graph(source, self._film.vector(lam, wi), self.io.film, f"{spec.id}@lam{lam:g}")

    def baked_onnx(self, lam, width) -> bytes:
        """The ONNX model (serialised bytes) of mode (λ, width) folded now from its BN path: the
        graph a bake serves, with the bundle's inputs minus ``film``. To keep a held mode as a
        file, or to open it elsewhere. Needs a bundle with BN paths; baking need not be on."""
        from oat_edge.runtime import bake as bake_mod

        lam, wi = check_lambda(lam), self._wi(width)
        bake_mod.require_onnx()
        return self._baked_graph(lam, wi, self._film_path_index(lam, wi)).to_bytes()

    def _film_path_index(self, lam: float, wi: int) -> int:
        bn = bn_branch(lam)
        for p in self._paths:
            if p.has_film and p.bn == bn and p.width == self.widths[wi]:
                return p.index
        raise ModeError(f"this bundle has no BN_{bn} path for width {fmt_width(self.widths[wi])}")

    def _parity_images(self) -> Tuple[np.ndarray, float]:
        """The bundle's reference images and tolerance (parity.npz), else seeded random images
        (bundles without a parity reference) and the export gate's 1e-4."""
        from oat_edge.bundle.safe_files import inside, load_npz

        ref = self.manifest.get("parity_reference") or {}
        try:
            data = self._verified.get(ref["file"])
            arrays = load_npz(data if data is not None else inside(self.bundle_dir, ref["file"], "parity reference"),
                              "parity reference")
            images = np.ascontiguousarray(arrays["images"], np.float32)
            if images.ndim == 4 and tuple(images.shape[1:]) == self.input_shape and len(images):
                return images, float(ref.get("tolerance", 1e-4))
        except (KeyError, TypeError, OatEdgeError):
            pass
        rng = np.random.default_rng(0)
        return rng.random((8,) + self.input_shape, dtype=np.float32), 1e-4

    def _bake_key(self, lam: float, wi: int, film_id: int, path: int):
        """Cache key of a FiLM-path mode: the path it bakes (which fixes the BN branch, width
        and precision) and its grid row id, or (λ, width index) off the grid."""
        return (path, film_id) if film_id < self._film.ring_base else (path, lam, wi)

    def _mode_bake_key(self, lam, width, precision):
        """(λ, width index, path index, cache key) of a FiLM-path mode, or None for a baked or
        missing path."""
        if width is None and isinstance(lam, Mode):
            lam, width, precision = lam.lam, lam.width, lam.precision if precision is None else precision
        lam = check_lambda(lam)
        precision = FP32 if precision is None else check_precision(precision)
        wi = self._wi(width)
        index, kind = self._table.lookup(lam, wi, precision)
        if kind == "baked" or index is None:
            return None
        row = self._film.grid_row(lam)
        return lam, wi, index, ((index, self._film.row_id(wi, row)) if row is not None else (index, lam, wi))

    def bake(self, lam, width=None, precision: Optional[str] = None) -> bool:
        """Bake mode (λ, width, precision) now, on the calling thread, unless it is cached or
        baking is off; True when it is cached afterwards. Prewarming; ``set_mode`` does this in
        the background."""
        found = self._mode_bake_key(lam, width, precision)
        if self._bakery is None or found is None:
            return False
        lam, wi, index, key = found
        try:
            self._bakery.bake(key, lam, wi, index)
        except OatEdgeError:
            return False
        return True

    def wait_baked(self, lam, width, timeout: Optional[float] = None, precision: Optional[str] = None) -> bool:
        """Block until (λ, width, precision) runs on a baked graph — an exported one, or one the
        background worker baked (True) — or until its bake failed or ``timeout`` seconds passed
        (False)."""
        found = self._mode_bake_key(lam, width, precision)
        if found is None:
            lam, wi = check_lambda(lam), self._wi(width)
            return self._table.lookup(lam, wi, FP32 if precision is None else check_precision(precision))[1] == "baked"
        if self._bakery is None:
            return False
        return self._bakery.wait(found[3], timeout)

    def baked_now(self) -> bool:
        """Whether the current mode is served by a baked graph (exported or baked at run time)."""
        _gen, path, film_id, lam, wi = self._reg.current()
        if film_id < 0:
            return True
        return self._bakery is not None and self._bakery.lookup(self._bake_key(lam, wi, film_id, path)) is not None

    def bake_stats(self) -> dict:
        """Counters of background baking: requests, hits, bakes, bake_seconds, evictions,
        failures, cached, memory_bytes, bake and transition (set_mode → baked live) times."""
        if self._bakery is None:
            return {"status": self.bake_status}
        return {"status": self.bake_status, **self._bakery.stats()}

    # --- bundle structure ---------------------------------------------------------------------
    def _wi(self, width, what: str = "") -> int:
        return self._table.width_index(width, what)

    # --- modes --------------------------------------------------------------------------------
    def set_mode(self, lam, width=None, precision: Optional[str] = None) -> None:
        """Switch to mode (λ, width, precision) — or ``set_mode(mode)`` with a Mode (its
        precision too). ``precision`` "fp32" (default), "fp16" or "int8": the bundle's file of
        that precision (``oat-edge export --precision``). A grid or baked λ is O(1), no
        allocation: it publishes a preloaded path and FiLM buffer (microseconds). An off-grid λ
        under the default ``offgrid="sync"`` first computes its FiLM vector inside this call,
        which costs what the FiLM generators cost: tens of µs on digits, milliseconds on
        ResNet-34 (README.md, "Run"; benchmarks/results/offgrid_set_mode.md). With
        ``offgrid="async"`` a worker thread computes it and the call returns in microseconds,
        before the mode is live (``wait_mode()``; frames keep the previous mode until then).
        ModeError for λ outside [0, 1] or NaN, an untrained width, or a precision the bundle
        (or this backend) lacks for the mode."""
        # Fast path: a grid or baked mode seen before is one dict lookup and the publish. Few
        # Python steps matter most when the caches are cold (after an inference swept them).
        key = (type(lam), lam, type(width), width, precision)
        try:
            hit = self._switch_cache.get(key)
        except TypeError:  # an unhashable argument: the full path below raises the clear error
            hit = None
        if hit is not None:
            self._reg.publish(*hit)
            bakery = self._bakery
            if bakery is not None and hit[3] >= 0:
                # Bakery.request's hit branch, inlined: a Python call frame is the dearest step
                # of this path when caches are cold (a bake running on the other core).
                bake_key = (hit[2], hit[3])
                entry = bakery._cache.get(bake_key)
                if entry is None:
                    bakery.request(bake_key, *hit[:3])
                else:
                    entry.tick = next(bakery._clock)
                    next(bakery._hits)
            return
        if self._offgrid is not None and type(lam) is float and 0.0 < lam <= 1.0:
            # The same for an asynchronous off-grid λ at a width seen before: (width index, BN_a
            # path, that width's baked λ) from the cache. A λ near a baked or grid one takes the
            # full path below (conservative: no rule of ModeTable.lookup is re-implemented).
            w = self._offgrid_widths.get((type(width), width, precision))
            if w is not None and not any(abs(lam - b) <= GRID_TOL for b in w[2]) and self._film.grid_row(lam) is None:
                self._offgrid.request(self._reg.reserve(), lam, w[0], w[1])
                return
        if width is None and isinstance(lam, Mode):
            lam, width, precision = lam.lam, lam.width, lam.precision if precision is None else precision
        lam = check_lambda(lam)
        precision = FP32 if precision is None else check_precision(precision)
        wi = self._wi(width)
        index, kind = self._table.lookup(lam, wi, precision)
        if kind == "baked":
            self._reg.publish(lam, wi, index, -1)
            self._remember_switch(key, (lam, wi, index, -1))
            return
        if index is None:
            self._table.index(lam, wi, precision)  # raises the ModeError naming the missing BN path
        row = self._film.grid_row(lam)
        if row is not None:
            film_id = self._film.row_id(wi, row)
            self._reg.publish(lam, wi, index, film_id)
            if self._bakery is not None:
                self._bakery.request((index, film_id), lam, wi, index)
            self._remember_switch(key, (lam, wi, index, film_id))
        elif self._offgrid is not None:
            self._offgrid.request(self._reg.reserve(), lam, wi, index)  # live once computed (wait_mode)
            if lam > 0.0 and len(self._offgrid_widths) < SWITCH_CACHE_SIZE:
                try:
                    self._offgrid_widths[key[2:]] = (wi, index, self._table.baked_lambdas(wi, precision))
                except TypeError:
                    pass
        else:
            self._reg.publish_computed(lam, wi, index)
            if self._bakery is not None:
                self._bakery.request((index, lam, wi), lam, wi, index)

    def _remember_switch(self, key, publish_args) -> None:
        """Grid and baked modes only (off-grid λ compute a vector each time); bounded because
        λ within GRID_TOL of a grid value are distinct keys of one mode."""
        try:
            if len(self._switch_cache) < SWITCH_CACHE_SIZE:
                self._switch_cache[key] = publish_args
        except TypeError:
            pass

    def wait_mode(self, timeout: Optional[float] = None) -> bool:
        """Block until the last ``set_mode`` is live (True) or ``timeout`` seconds pass (False).
        Always True at once unless ``offgrid="async"`` has an off-grid λ in flight."""
        return True if self._offgrid is None else self._offgrid.wait(timeout)

    @property
    def mode_pending(self) -> bool:
        """Whether an asynchronous off-grid ``set_mode`` is not live yet (``offgrid="async"``)."""
        return self._offgrid is not None and self._offgrid.pending

    def offgrid_stats(self) -> dict:
        """Counters of asynchronous off-grid switches: requests, published, superseded, and the
        set_mode → live time (p50/p99 ms). {"policy": "sync"} under the default policy."""
        if self._offgrid is None:
            return {"policy": self.offgrid}
        return {"policy": self.offgrid, **self._offgrid.stats()}

    @property
    def mode(self) -> Mode:
        """The mode the next inference will run in (with ``offgrid="async"``, the previous mode
        until an off-grid request is live)."""
        _gen, path, _film, lam, wi = self._reg.current()
        return Mode(lam, self.widths[wi], self._paths[path].precision)

    @property
    def precisions(self) -> List[str]:
        """The precisions this runtime can run (those of the bundle's files its backend runs)."""
        return list(self._table.precisions)

    @property
    def modes(self) -> List[Mode]:
        """The modes of the bundle's calibration grid (every FiLM-grid λ × width without one),
        each at every precision the runtime has files for (fp32 first)."""
        cal = self.manifest.get("calibration")
        if cal and cal.get("records"):
            seen, base = set(), []
            for r in cal["records"]:
                key = (float(r["lam"]), float(r["width"]))
                if key not in seen:
                    seen.add(key)
                    base.append(key)
        else:
            base = [(lam, w) for w in self.widths for lam in self._film.grid_list]
        return [Mode(lam, w, p) for p in self.precisions for lam, w in base]

    def path_for(self, lam, width, precision: str = FP32) -> str:
        """Id of the path a mode runs on (a baked path or the BN path of its width)."""
        lam, wi = check_lambda(lam), self._wi(width)
        index, _kind = self._table.lookup(lam, wi, check_precision(precision))
        if index is None:
            raise ModeError(f"this bundle has no path for {Mode(lam, self.widths[wi], precision)}")
        return self._paths[index].id

    def film_vector(self, lam, width) -> np.ndarray:
        """A copy of the flat FiLM vector of (λ, width) (what its BN path is fed)."""
        return self._film.vector(check_lambda(lam), self._wi(width))

    # --- inference ----------------------------------------------------------------------------
    def infer(self, images):
        """Logits [batch, num_classes] of the current mode. numpy in → numpy out; a torch tensor
        in → a torch tensor out on the same device (CPU tensors are read without a copy; CUDA
        tensors stay on the GPU with the torch and tensorrt backends)."""
        return self._infer(images)[0]

    @property
    def preprocessing(self) -> dict:
        """The bundle's raw → input transform with every missing field at its documented default
        (a bundle from before the field existed: float32 [0, 1] frames at the model's size)."""
        from oat_edge.preprocess import with_defaults

        return with_defaults(self.manifest.get("preprocessing"), self.input_shape[0])

    @property
    def class_names(self) -> Optional[List[str]]:
        return self.preprocessing.get("class_names")

    def preprocess(self, frames, color: str = "bgr") -> np.ndarray:
        """Camera frames -> the float32 [N, C, H, W] batch ``infer`` takes, by the bundle's
        preprocessing contract (numpy only). ``frames``: one frame or a list of frames, each
        [H, W, 3] (``color`` "bgr" as OpenCV delivers, or "rgb"), [H, W, 1] or [H, W], of any size
        when the contract has a resize step; uint8 for uint8 bundles."""
        from oat_edge.preprocess import apply_preprocessing, check_frame_dtype, frames_list

        contract = self.preprocessing
        hw = self.input_shape[1:]
        batch = [apply_preprocessing(check_frame_dtype(f, contract), contract, hw, color) for f in frames_list(frames)]
        x = np.stack(batch)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:  # only from frames outside the contract's source range
            rng = contract.get("source_range")
            raise InputError(f"frames map to values in [{lo:.4g}, {hi:.4g}], outside [0, 1]: this bundle expects raw "
                             f"values in {rng} (scale {contract.get('scale'):.6g})")
        return x

    def infer_frames(self, frames, color: str = "bgr") -> np.ndarray:
        """Logits [N, num_classes] for raw camera frames in the current mode: ``preprocess``
        then ``infer``, split into batches the bundle's profile allows."""
        x = self.preprocess(frames, color)
        step = self.io.batch_max
        if x.shape[0] <= step:
            return self.infer(x)
        return np.concatenate([self.infer(x[i: i + step]) for i in range(0, x.shape[0], step)])

    def infer_with_mode(self, images):
        """(logits, Mode): the mode this very inference ran in (for logs under concurrent
        switching, where ``rt.mode`` may already have moved on)."""
        out, lam, wi, path = self._infer(images, with_path=True)
        return out, Mode(lam, self.widths[wi], self._paths[path].precision)

    def _infer(self, images, with_path: bool = False):
        to_torch = None
        if isinstance(images, np.ndarray):
            x = self._checker.numpy(images)
        elif is_torch_tensor(images):
            if images.device.type == "cuda" and self.backend.accepts_cuda:
                out, lam, wi, path = self._infer_cuda(images)
                return (out, lam, wi, path) if with_path else (out, lam, wi)
            x = self._checker.torch_cpu(images)
            to_torch = images.device
        else:
            x = self._checker.numpy(images)  # raises the type error
        self._check_open()
        slot, _gen, path, film_id, lam, wi = self._reg.acquire()
        try:
            baked = None
            if film_id >= 0 and self._bakery is not None:
                baked = self._bakery.lookup((path, film_id) if film_id < self._film.ring_base else (path, lam, wi))
            out = None
            if baked is not None:
                try:
                    out = baked.run(x)
                except BakedModeGone:  # its engine copy was refitted for another mode meanwhile
                    self._bakery.discard(baked)
            if out is None:
                out = self.backend.run(path, x, self._views[film_id] if film_id >= 0 else None)
        except Exception:
            self._check_open()  # closed meanwhile: say so, not the backend's error
            raise
        finally:
            self._reg.release(slot)
        if to_torch is not None:
            import torch

            out = torch.from_numpy(out).to(to_torch)
        return (out, lam, wi, path) if with_path else (out, lam, wi)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"this Runtime of {self.bundle_dir} is closed; make a new one")

    def _infer_cuda(self, images):
        x = self._checker.torch_cuda(images)
        self._check_open()
        slot, _gen, path, film_id, lam, wi = self._reg.acquire()
        try:
            out = self.backend.run_cuda(path, x, self._views[film_id] if film_id >= 0 else None)
        except Exception:
            self._check_open()
            raise
        finally:
            self._reg.release(slot)
        return out, lam, wi, path

    # --- selection ----------------------------------------------------------------------------
    def select(self, min_robust_acc: Optional[float] = None, min_clean_acc: Optional[float] = None,
               max_latency_ms: Optional[float] = None, prefer: str = "robust", batch: int = 1,
               attack: Optional[str] = None, latency_quantile: str = "p99") -> Mode:
        """The mode that meets the budgets and is best by ``prefer`` ("robust", "accurate",
        "fast"), over every (λ, width, precision) the bundle has calibrated. Accuracies are the
        bundle's calibration (robust accuracy under ``attack``, by default the calibration's
        robust metric; for fp16/int8 the worst of transfer and fake-quantized white-box
        attacks), each taken at its one-sided 95 % Wilson lower bound over the calibration
        images. ``max_latency_ms`` bounds this device's ``latency_quantile`` latency ("p99" by
        default, so nearly every frame meets it; "p90", "p50") at ``batch`` from the bundle's
        latency profile (``oat-edge bench``), else from a quick measurement here, cached.
        ModeError naming the closest modes when nothing fits; BundleError when accuracy
        budgets are given for a bundle exported without --calibrate. Does not switch: call
        ``set_mode(mode)`` with the result."""
        min_ra, min_sa, max_lat, code = policy.check_budgets(min_robust_acc, min_clean_acc, max_latency_ms,
                                                               prefer, batch)
        if not self.io.batch_min <= batch <= self.io.batch_max:
            raise ConfigError(f"batch {batch} is outside this bundle's batch range {self.io.batch_min}..{self.io.batch_max}")
        if not self.calibrated and not (math.isnan(min_ra) and math.isnan(min_sa)):
            raise BundleError(policy.NO_CALIBRATION)  # before measuring anything
        quantile = policy.check_quantile(latency_quantile)
        candidates, calibrated = self._candidates(batch, attack, quantile)
        return policy.choose(candidates, min_ra, min_sa, max_lat, code, self._impl, calibrated, batch).mode

    def _candidates(self, batch: int, attack: Optional[str], quantile: str = "p99") -> Tuple[List[policy.Candidate], bool]:
        """Every selectable mode with its accuracies and latency at ``batch`` (cached: the
        calibration and the latency sources do not change while the runtime lives)."""
        key = (batch, attack, quantile)
        cached = self._candidate_cache.get(key)
        if cached is not None:
            return cached
        _attack, table = policy.calibration_table(self.manifest.get("calibration"), attack)
        calibrated = bool(table)
        rows = table if calibrated else [(m.lam, m.width, math.nan, math.nan, m.precision) for m in self.modes]
        candidates = []
        for lam, width, sa, ra, precision in rows:
            try:
                wi = self._wi(width)
            except ModeError:
                continue  # calibrated at a width this bundle did not export
            if precision not in self._table.precisions:
                continue  # a precision this bundle (or this backend) has no files for
            lat, source, kind = self._latency(lam, wi, batch, precision, quantile)
            candidates.append(policy.Candidate(Mode(lam, self.widths[wi], precision), sa, ra, lat, kind, source))
        self._candidate_cache[key] = (candidates, calibrated)
        return candidates, calibrated

    def latency_ms(self, lam, width, batch: int = 1, precision: str = FP32, quantile: str = "p50") -> float:
        """The ``quantile`` latency (ms) of a mode at ``batch`` on this device: profile or quick
        measurement."""
        return self._latency(check_lambda(lam), self._wi(width), int(batch), check_precision(precision),
                             policy.check_quantile(quantile))[0]

    def _latency(self, lam: float, wi: int, batch: int, precision: str = FP32,
                 quantile: str = "p50") -> Tuple[float, str, str]:
        """(ms at ``quantile``, source, path kind) of a mode: the device's latency profile, else measured."""
        index, kind = self._table.lookup(lam, wi, precision)
        if index is None:
            return math.nan, "none", kind
        ms = profile_latency(self._latency_profile, lam, self.widths[wi], batch, kind, precision, quantile)
        if ms is not None:
            return ms, "profile", kind
        return self._measure(index, batch)[quantile], "measured", kind

    def _measure(self, index: int, batch: int) -> Dict[str, float]:
        """{"p50", "p90", "p99"} ms over a few runs of one path (cached): the fallback when the
        bundle has no latency profile for this device; with MEASURE_RUNS runs the p99 is close
        to the slowest run. ``oat-edge bench`` measures properly and writes the profile."""
        key = (index, batch)
        with self._measure_lock:
            if key in self._measured:
                return self._measured[key]
            spec = self._paths[index]
            x = np.random.default_rng(0).random((batch,) + self.input_shape, dtype=np.float32)
            film = self._film.tables[self._wi(spec.width)][0] if spec.has_film else None
            self.backend.run(index, x, film)  # warm-up
            times = []
            for _ in range(MEASURE_RUNS):
                t0 = time.perf_counter()
                self.backend.run(index, x, film)
                times.append((time.perf_counter() - t0) * 1e3)
            self._measured[key] = {q: float(np.percentile(times, float(q[1:]))) for q in policy.LATENCY_QUANTILES}
            return self._measured[key]

    # --- misc ---------------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        return bool((self.manifest.get("calibration") or {}).get("records"))

    @property
    def paths(self) -> List[PathSpec]:
        return list(self._paths)

    def describe(self) -> dict:
        return {"bundle": str(self.bundle_dir), "backend": self.backend_name, "backend_reason": self.backend_reason,
                "device": self.device, "device_key": self.device_key, "threads": self.threads, "impl": self.impl,
                "widths": self.widths, "input_shape": list(self.input_shape), "batch": [self.io.batch_min, self.io.batch_max],
                "paths": [p.id for p in self._paths], "calibrated": self.calibrated,
                "latency_profile": (self._latency_profile or {}).get("file"), "mode": str(self.mode),
                "bake": self.bake_status, "offgrid": self.offgrid}

    def close(self) -> None:
        self._closed = True  # first: an infer racing with close gets the closed error
        if self._offgrid is not None:
            self._offgrid.close()
        if self._bakery is not None:
            self._bakery.close()
        self.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runtime({str(self.bundle_dir)!r}, backend={self.backend_name!r}, mode={self.mode})"
