"""The ONNX target: one frozen, simplified, op-checked ONNX file per (BN branch × width) — the
paths, fed the FiLM vector as an input — and per baked mode (λ × width, FiLM folded into the
weights), each through the parity gate against the PyTorch model. With extra precisions
(``--precision fp16 int8``) each fp32 file also gets a derived copy per precision
(``export.precision``), gated with that precision's bar. Also fills the verify reference
(PyTorch logits of a few images per fp32 file, ``parity.npz``; reduced-precision files are
not held to verify's 1e-4 bar)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

from oat_edge.bundle.film import film_vector
from oat_edge.bundle.names import baked_id, parity_key, path_id
from oat_edge.errors import BundleError
from oat_edge.export.parity import check_file, parity_failure, parity_lambdas, reference_lambdas, torch_logits
from oat_edge.export.precision import calibration_feeds, derive
from oat_edge.export.targets.base import ExportTarget
from oat_edge.fileio import sha256_file
from oat_edge.mode import bn_branch
from oat_edge.progress import progress


class OnnxTarget(ExportTarget):
    name = "onnx"
    phase = "graphs"

    def write(self, job, bundle_dir: Path) -> Dict[str, List[Dict[str, Any]]]:
        paths, baked, derived_paths, derived_baked = [], [], [], []
        items = [("path", bn, w) for w in job.widths for bn in job.bns]
        items += [("baked", lam, w) for lam in job.bake_lams for w in job.widths]
        for kind, what, w in progress(items, job.progress, "exporting paths"):
            t0 = time.perf_counter()
            if kind == "path":
                entry = self._path(job, bundle_dir, what, w)
                paths.append(entry)
            else:
                entry = self._baked(job, bundle_dir, what, w)
                baked.append(entry)
            job.seconds_per_file[entry["id"]] = round(time.perf_counter() - t0, 3)
            for precision in job.precisions[1:]:  # fp32 first: every other precision is made from it
                t0 = time.perf_counter()
                extra = self._derived(job, bundle_dir, entry, kind, what, w, precision)
                (derived_paths if kind == "path" else derived_baked).append(extra)
                job.seconds_per_file[extra["id"]] = round(time.perf_counter() - t0, 3)
        if any(job.failures.values()):
            raise parity_failure(job.failures)
        # fp32 entries first, as in bundles without precisions (their runtime indices do not move)
        return {"paths": paths + derived_paths, "baked": baked + derived_baked}

    # --- one file each ----------------------------------------------------------------------------
    def _path(self, job, bundle_dir: Path, bn: str, w: float) -> Dict[str, Any]:
        from oat_edge.export.freeze import folded_bn_count, freeze_path
        from oat_edge.flops import count_path

        model, pid = job.model, path_id(bn, w)
        rel = f"paths/{pid}.onnx"
        gm = freeze_path(model, w, bn)
        info = self._onnx(job, gm, model.film_size(w), pid, bundle_dir / rel)
        fl = count_path(model, job.input_shape, w, 0.0 if bn == "c" else 1.0)

        def film_for(lam, _w=w):
            return film_vector(job.tables, lam, _w)

        par = self._gate(job, bundle_dir / rel, w, parity_lambdas(bn, model.train_lambdas, job.grid), film_for, pid)
        for lam in reference_lambdas(bn, model.train_lambdas):
            self._reference(job, pid, lam, w)
        return {
            "id": pid, "bn": bn, "width": float(w), "file": rel, "sha256": sha256_file(bundle_dir / rel),
            "bytes": info["bytes"], "film_size": int(model.film_size(w)),
            "flops": fl["conv_linear_flops"], "film_generator_flops": fl["film_generator_flops"],
            "params": fl["params"], "simplified": info["simplified"], "ops": info["ops"],
            "folded": folded_bn_count(gm), "parity": par,
        }

    def _baked(self, job, bundle_dir: Path, lam: float, w: float) -> Dict[str, Any]:
        from oat_edge.export.freeze import folded_bn_count, freeze_path
        from oat_edge.flops import count_path

        model, bid = job.model, baked_id(lam, w)
        rel = f"baked/{bid}.onnx"
        gm = freeze_path(model, w, bn_branch(lam), film_vector=film_vector(job.tables, lam, w))
        info = self._onnx(job, gm, None, bid, bundle_dir / rel)
        fl = count_path(model, job.input_shape, w, lam)
        par = self._gate(job, bundle_dir / rel, w, [lam], None, bid)
        self._reference(job, bid, lam, w)
        return {
            "id": bid, "lam": float(lam), "bn": bn_branch(lam), "width": float(w), "file": rel,
            "sha256": sha256_file(bundle_dir / rel), "bytes": info["bytes"], "flops": fl["conv_linear_flops"],
            "params": fl["params"] - _generator_params(model, w), "simplified": info["simplified"],
            "ops": info["ops"], "folded": folded_bn_count(gm), "parity": par,
        }

    def _derived(self, job, bundle_dir: Path, src: Dict[str, Any], kind: str, what, w: float,
                 precision: str) -> Dict[str, Any]:
        """The ``precision`` copy of the fp32 file ``src`` (export.precision), through the
        parity gate with that precision's bar."""
        from oat_edge.export.onnx_export import op_types

        model = job.model
        if kind == "path":
            new_id, lams = path_id(what, w, precision), _parity_lambdas(job, what)
            calib_lams = [lam for lam in model.train_lambdas if bn_branch(lam) == what] or [0.0 if what == "c" else 1.0]

            def film_for(lam, _w=w):
                return film_vector(job.tables, lam, _w)
        else:
            new_id, lams, calib_lams, film_for = baked_id(what, w, precision), [what], [what], None
        rel = f"{'paths' if kind == 'path' else 'baked'}/{new_id}.onnx"
        t0 = time.perf_counter()
        feeds = calibration_feeds(job.quant_images, calib_lams, film_for) if precision == "int8" else None
        proto = derive(precision, bundle_dir / src["file"], feeds, job.int8_activations)
        data = _check_and_write(job, proto, new_id, precision, bundle_dir / rel)
        job.timings["freeze_export"] += time.perf_counter() - t0
        par = self._gate(job, bundle_dir / rel, w, lams, film_for, new_id, precision)
        keep = {k: v for k, v in src.items() if k not in ("id", "file", "sha256", "bytes", "ops", "parity")}
        return {**keep, "id": new_id, "file": rel, "sha256": sha256_file(bundle_dir / rel), "bytes": len(data),
                "ops": op_types(proto), "parity": par, "precision": precision, "derived_from": src["id"]}

    # --- steps ---------------------------------------------------------------------------------
    @staticmethod
    def _onnx(job, gm, film_size, graph_name: str, dest: Path) -> Dict[str, Any]:
        from oat_edge.export.onnx_export import convert_opset, export_onnx, global_pooling, op_types, simplify

        t0 = time.perf_counter()
        proto = export_onnx(gm, job.input_shape, film_size, job.opset)
        proto, why = simplify(proto)
        proto = convert_opset(global_pooling(proto), job.opset)
        if why:
            warnings.warn(f"{graph_name}: kept the unsimplified graph ({why})", RuntimeWarning, stacklevel=3)
            job.notes.append(f"{graph_name}: not simplified ({why})")
        data = _check_and_write(job, proto, graph_name, "exported", dest)
        job.timings["freeze_export"] += time.perf_counter() - t0
        return {"simplified": why is None, "ops": op_types(proto), "bytes": len(data)}

    @staticmethod
    def _gate(job, path_file: Path, width: float, lams, film_for, label: str, precision: str = "fp32") -> Dict:
        t0 = time.perf_counter()
        rec = check_file(job.model, path_file, width, lams, job.images, film_for,
                         reference_cache=job.reference_logits, precision=precision)
        job.timings["parity"] += time.perf_counter() - t0
        job.failures[label] = rec.pop("failures")
        return rec

    @staticmethod
    def _reference(job, entry_id: str, lam: float, width: float) -> None:
        key = parity_key(entry_id, lam)
        job.reference[key] = torch_logits(job.model, job.reference["images"], lam, width)
        job.reference_entries.append({"id": entry_id, "lam": float(lam), "key": key})


def _parity_lambdas(job, bn: str):
    return parity_lambdas(bn, job.model.train_lambdas, job.grid)


def _generator_params(model, width) -> int:
    i = model.widths.index(float(width))
    return sum(t.numel() for s in model.film_sites() for t in s.generator_weights(i))


def _check_and_write(job, proto, name: str, what: str, dest: Path) -> bytes:
    """onnx.checker on the graph, its op notes into the job, then its bytes to ``dest``."""
    from oat_edge.export.onnx_export import canonicalize, to_bytes
    from oat_edge.export.opcheck import check_ops

    try:
        canonicalize(proto, name)
    except Exception as e:  # onnx.checker raises its own ValidationError
        raise BundleError(f"{name}: {what} ONNX graph fails onnx.checker: {str(e)[:300]}") from None
    job.notes.extend(n for n in check_ops(proto, where=name) if n not in job.notes)
    data = to_bytes(proto)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return data
