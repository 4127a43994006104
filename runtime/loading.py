"""Opening a bundle for ``Runtime``: the manifest as the runners see it (tensor names, paths,
the mode -> path table), the FiLM bank checked against it, the backend chosen and its runner
built with every path loaded, and this device's latency profile.

The manifest was validated by ``oat_edge.bundle.load_manifest`` (typed schema, cross
references): the fields read here are present and well-typed.
"""

from __future__ import annotations

import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Dict, List, Optional, Tuple

from oat_edge.bundle.latency import read_latency_profile
from oat_edge.bundle.modes import ModeTable
from oat_edge.errors import BundleError, ConfigError
from oat_edge.host import default_threads
from oat_edge.mode import bn_branch, check_lambda, fmt_width
from oat_edge.precision import DEFAULT as FP32, entry_precision
from oat_edge.runtime import backends as registry
from oat_edge.runtime.backends.base import BundleContext, IOSpec, PathSpec, Runner
from oat_edge.runtime.device import device_key
from oat_edge.runtime.film import FilmBank

# Backends that run the reduced-precision (fp16 / int8 QDQ) files as they are; the others run
# a bundle's fp32 files only (TensorRT engines are built from those; the torch backend's ONNX
# interpreter has no QuantizeLinear/DequantizeLinear).
REDUCED_PRECISION_BACKENDS = ("onnxruntime",)


def bundle_io(m: dict) -> IOSpec:
    """The manifest's tensor names, input shape, classes and batch range."""
    model, io, batch = m["model"], m["io"], m["batch"]
    return IOSpec(images=io["images"]["name"], film=io["film"]["name"], logits=io["logits"]["name"],
                  input_shape=tuple(int(v) for v in model["input_shape"]), num_classes=int(model["num_classes"]),
                  batch_min=int(batch["min"]), batch_opt=int(batch.get("opt") or batch["min"]),
                  batch_max=int(batch["max"]))


def bundle_paths(m: dict, bundle_dir: Path, precisions=None) -> Tuple[List[PathSpec], ModeTable]:
    """Every path and baked path as the runners see them (paths first, in manifest order), and
    the mode -> path table over their indices; only those of ``precisions`` when given."""
    if precisions is not None:
        m = {**m, "paths": [e for e in m["paths"] if entry_precision(e) in precisions],
             "baked": [e for e in m.get("baked") or [] if entry_precision(e) in precisions]}
    table, entries = ModeTable.from_manifest(m)
    paths: List[PathSpec] = []
    for index, e in enumerate(entries):
        width = table.widths[table.width_index(e["width"])]
        common = dict(sha256=e.get("sha256", ""), ops=tuple(e.get("ops", ())), precision=entry_precision(e))
        if e["kind"] == "path":
            paths.append(PathSpec(index, e["id"], bundle_dir / e["file"], "film", e["bn"], width, None,
                                  int(e["film_size"]), **common))
        else:
            lam = check_lambda(e["lam"])
            paths.append(PathSpec(index, e["id"], bundle_dir / e["file"], "baked", e.get("bn", bn_branch(lam)),
                                  width, lam, 0, **common))
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


def warn_if_unsigned(bundle_dir: Path, trusted_keys) -> None:
    """One warning line when an unsigned bundle is accepted (only possible without trusted keys)."""
    from oat_edge.bundle.names import SIGNATURE_FILE
    from oat_edge.bundle.signature import UnsignedBundleWarning

    if not trusted_keys and not (bundle_dir / SIGNATURE_FILE).exists():
        warnings.warn(f"bundle {bundle_dir} is unsigned: its sha256 values catch corruption, not tampering "
                      "(sign it with `oat-edge sign` and load it with trusted_keys)", UnsignedBundleWarning, stacklevel=3)


def check_threads(threads) -> Tuple[Optional[int], bool]:
    """(thread count or None for all CPUs, tuned?) from Runtime's ``threads`` argument."""
    if threads == "tuned":
        return None, True
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, \"tuned\" or None (all CPUs), got {threads!r}")
    return threads, False


def load_film_bank(m: dict, bundle_dir: Path, impl: ModuleType, ring_slots: int, verified: Dict[str, bytes],
                   paths: List[PathSpec]) -> FilmBank:
    """film.npz as the runtime uses it, checked against the manifest and the paths' FiLM sizes."""
    film = m["film"]
    widths = [float(w) for w in m["model"]["widths"]]
    sizes = {float(k): int(v) for k, v in (film.get("sizes") or {}).items()}
    slope = float(film["negative_slope"])
    bank = FilmBank(bundle_dir / film["file"], widths, sizes, slope, impl, ring_slots, data=verified.get(film["file"]))
    if bank.file_slope is not None and bank.file_slope != slope:
        # film.npz is hashed (and the hash signed); a manifest value that disagrees was edited.
        raise BundleError(f"{bundle_dir}/manifest.json: film.negative_slope {film['negative_slope']!r} differs from "
                          f"film.npz's {bank.file_slope!r}; the manifest was altered, re-export the bundle")
    encoding = film.get("lambda_encoding") or "ro"
    if bank.encoding != encoding:
        raise BundleError(f"{bundle_dir}/manifest.json: film.lambda_encoding {encoding!r} differs from film.npz's "
                          f"{bank.encoding!r}; the manifest was altered, re-export the bundle")
    for p in paths:
        if p.has_film and p.film_size != bank.sizes[widths.index(p.width)]:
            raise BundleError(f"path {p.id} takes a FiLM vector of size {p.film_size}, film.npz has "
                              f"{bank.sizes[widths.index(p.width)]} for width {fmt_width(p.width)}")
    return bank


@dataclass
class OpenedBackend:
    """The runner of the chosen backend with its paths, and what was chosen and why."""

    runner: Runner
    name: str
    reason: str
    paths: List[PathSpec]
    table: ModeTable
    device_key: str
    latency_profile: Optional[dict]


class BackendOpener:
    """Chooses the backend for a bundle, builds its runner and finds this device's latency
    profile; with trusted keys only a profile the signature covers is read (an unsigned one could
    steer ``select``)."""

    def __init__(self, manifest: dict, bundle_dir: Path, io: IOSpec, verified: Dict[str, bytes], signed_only: bool):
        self.manifest = manifest
        self.bundle_dir = bundle_dir
        self.io = io
        self.verified = verified
        self.signed_only = signed_only
        self.reason = ""

    def open(self, paths: List[PathSpec], table: ModeTable, impl_ext: Optional[ModuleType], backend: str,
             threads: Optional[int], tuned: bool, device: Optional[str], providers, backend_options) -> OpenedBackend:
        if providers is not None:
            if backend == "auto":
                backend = "onnxruntime"  # execution providers are onnxruntime's
            elif backend != "onnxruntime":
                raise ConfigError(f"providers apply to the onnxruntime backend, not {backend!r}")
            backend_options = {**dict(backend_options or {}), "providers": providers}
        context = BundleContext(self.manifest, self.bundle_dir, impl_ext,
                                verified_onnx(self.manifest, self.bundle_dir, self.verified))
        fp32_paths = [p for p in paths if p.precision == FP32]
        name, self.reason = registry.choose_backend(backend, device,
                                                    lambda b: b.loader().auto_check(context, fp32_paths))
        if name not in REDUCED_PRECISION_BACKENDS and len(fp32_paths) < len(paths):
            paths, table = bundle_paths(self.manifest, self.bundle_dir, (FP32,))
            self._note(f"fp32 files only ({name} does not run the bundle's fp16/int8 files)")
        if tuned:
            backend_options = self._tuned_threads(name, backend_options)
        runner = registry.runner_class(name)(paths, self.io, threads=threads, device=device, bundle=context,
                                             **dict(backend_options or {}))
        context.verified.clear()
        key = device_key(name, runner.threads if runner.device == "cpu" else None, runner.device)
        accelerators = [p for p, _ in getattr(runner, "providers", []) if p != "CPUExecutionProvider"]
        if accelerators:  # latency on a GPU provider is not the CPU's: its own profile
            key += "-" + "-".join(p.replace("ExecutionProvider", "").lower() for p in accelerators)
        return OpenedBackend(runner, name, self.reason, paths, table, key, self.read_profile(key))

    def _note(self, msg: str) -> None:
        self.reason = (self.reason + "; " if self.reason else "") + msg

    def read_profile(self, key: str) -> Optional[dict]:
        """This device's latency profile, read from the verified bytes when signatures count."""
        if not self.signed_only:
            return read_latency_profile(self.bundle_dir, key)
        data = self.verified.get(f"latency/{key}.json")
        return None if data is None else read_latency_profile(self.bundle_dir, key, data=data)

    def _tuned_threads(self, name: str, backend_options: Optional[dict]) -> Optional[dict]:
        """threads="tuned": per-path intra-op counts from this device's latency profile
        (``oat-edge bench --tune-threads``), each path's best at the batch nearest the bundle's
        ``batch.opt``; without them every path gets all CPUs and the reason says why."""
        if name != "onnxruntime" or (backend_options or {}).get("providers"):
            self._note('threads="tuned": per-path thread counts apply to onnxruntime on the CPU; using the default')
            return backend_options
        # The tuning covers every count, whatever --threads the bench ran with: take the profile
        # of this CPU's default count first, else any of this CPU's onnxruntime profiles.
        base = device_key("onnxruntime", None, "cpu")
        keys = [device_key("onnxruntime", default_threads(), "cpu")]
        keys += sorted(p.stem for p in (self.bundle_dir / "latency").glob(f"{base}-t*.json") if p.stem not in keys)
        table, key = None, keys[0]
        for k in keys:
            table = (self.read_profile(k) or {}).get("path_threads")
            if isinstance(table, dict) and table:
                key = k
                break
        if not isinstance(table, dict) or not table:
            self._note(f'threads="tuned": no tuned thread counts for {base} (run `oat-edge bench --tune-threads` '
                       "here); using all CPUs")
            return backend_options
        return {**dict(backend_options or {}), "path_threads": self._chosen_threads(table, key)}

    def _chosen_threads(self, table: dict, key: str) -> Dict[str, int]:
        chosen: Dict[str, int] = {}
        cpus = default_threads()
        for pid, by_batch in table.items():
            try:
                pairs = sorted((abs(int(b) - self.io.batch_opt), -int(b), int(t)) for b, t in dict(by_batch).items())
            except (TypeError, ValueError, AttributeError):
                raise BundleError(f"latency profile {key}: path_threads of {pid!r} is malformed; rerun the bench") from None
            if pairs and pairs[0][2] >= 1:  # never more threads than this process has CPUs (the file is unsigned)
                chosen[str(pid)] = min(pairs[0][2], cpus)
        return chosen
