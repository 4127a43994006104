"""The parity gate: every exported file must compute what the PyTorch model computes.

Each path runs in ONNX Runtime at several λ — the training set S1, the unseen S3, and two λ
off the FiLM grid so the numpy generator route of ``film_vector`` is exercised — fed with
the FiLM vector the runtime would feed (``film_vector`` on the bundle's tables), and is
compared with ``model(x, λ)`` at that width in eval mode, on real images. The bar is
max |Δlogit| ≤ 1e-4 and identical top-1; anything else fails the export.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from oat_edge.errors import BundleError, ConfigError
from oat_edge.lambda_code import S1, S3_UNSEEN
from oat_edge.mode import same_lambda

PARITY_TOL = 1e-4
OFF_GRID_PROBES = (0.123, 0.618)  # not on any 0.05-step grid: exercises the generator route


def parity_lambdas(bn: str, train_lambdas: Sequence[float], grid: Sequence[float]) -> List[float]:
    """λ values a path is checked at: λ = 0 for BN_c; for BN_a every λ > 0 of S1 ∪ S3 ∪ the
    training set, plus off-grid probes."""
    if bn == "c":
        return [0.0]
    lams = {float(x) for x in list(S1) + list(S3_UNSEEN) + list(train_lambdas) if float(x) > 0.0}
    lams |= {p for p in OFF_GRID_PROBES if not any(same_lambda(p, g) for g in grid)}
    return sorted(lams)


def reference_lambdas(bn: str, train_lambdas: Sequence[float]) -> List[float]:
    """The few λ of a path whose logits go into parity.npz for ``oat-edge verify``."""
    if bn == "c":
        return [0.0]
    positive = [float(x) for x in train_lambdas if float(x) > 0]
    lams = {min(positive) if positive else 1.0, OFF_GRID_PROBES[0], max(positive) if positive else 1.0}
    return sorted(lams)


def load_parity_images(dataset: Optional[dict], input_shape: Sequence[int], n: int, data_dir=None) -> Tuple[np.ndarray, str]:
    """Real images for the parity gate: the first ``n`` test images of the checkpoint's dataset
    when the training stage can load it; otherwise seeded uniform noise (noted in the
    manifest — e.g. CIFAR files absent on this machine)."""
    name = (dataset or {}).get("name")
    if name:
        try:
            from oat_edge.training.datasets import dataset_options, eval_split, load_dataset

            split = eval_split(name)
            ds = load_dataset(name, split, data_dir, dataset_options(dataset))
            x = ds.tensors[0][:n].numpy().astype(np.float32)
            if list(x.shape[1:]) == [int(v) for v in input_shape] and x.shape[0] > 0:
                return np.ascontiguousarray(x), f"{name}:{split}[:{x.shape[0]}]"
        except (ImportError, ConfigError):
            pass
    rng = np.random.Generator(np.random.PCG64(0))
    return rng.random((n, *[int(v) for v in input_shape]), dtype=np.float32), f"uniform[0,1) PCG64(0) x{n}"


def torch_logits(model, images: np.ndarray, lam: float, width: float) -> np.ndarray:
    import torch

    model.eval()
    model.set_width(width)
    with torch.no_grad():
        return model(torch.from_numpy(images), float(lam)).numpy()


def compare(ref: np.ndarray, out: np.ndarray) -> Dict[str, float]:
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
    top1 = float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1)))
    return {"max_abs_diff": diff, "top1_agreement": top1}


def check_file(model, onnx_path, width: float, lams: Sequence[float], images: np.ndarray,
               film_for=None, tol: float = PARITY_TOL, reference_cache: Optional[dict] = None,
               precision: str = "fp32") -> Dict:
    """Run one ONNX file at each λ against the model; returns the manifest's parity record
    plus "failures" (empty when the file passes). ``film_for(λ)`` gives the flat FiLM vector
    (None for a baked file). ``reference_cache`` keeps PyTorch logits per (λ, width) so a baked
    mode reuses those of its BN path. A reduced-precision file (``precision`` fp16/int8) is
    held to that precision's bar (``export.precision.TOLERANCES``): top-1 agreement with the
    fp32 model ≥ top1_min and max |Δlogit| ≤ max_rel_diff × the largest |reference logit|."""
    from oat_edge.onnxrt import open_session

    sess = open_session(onnx_path)
    per_lambda, failures = {}, []
    worst = {"max_abs_diff": 0.0, "top1_agreement": 1.0}
    bar = None
    if precision != "fp32":
        from oat_edge.export.precision import TOLERANCES

        bar = TOLERANCES[precision]
        worst.update(max_rel_diff=0.0, top1_agreement_decisive=1.0)
    cache = {} if reference_cache is None else reference_cache
    for lam in lams:
        key = (float(lam), float(width))
        if key not in cache:
            cache[key] = torch_logits(model, images, lam, width)
        ref = cache[key]
        feed = {"images": images}
        if film_for is not None:
            feed["film"] = film_for(lam)
        out = sess.run(["logits"], feed)[0]
        c = compare(ref, out)
        per_lambda[f"{lam:g}"] = c["max_abs_diff"]
        worst["max_abs_diff"] = max(worst["max_abs_diff"], c["max_abs_diff"])
        worst["top1_agreement"] = min(worst["top1_agreement"], c["top1_agreement"])
        if bar is None:
            ok = c["max_abs_diff"] <= tol and c["top1_agreement"] == 1.0
        else:
            scale = max(float(np.max(np.abs(ref))), 1e-12)
            top2 = np.sort(ref, axis=1)[:, -2:]
            decisive = (top2[:, 1] - top2[:, 0]) >= bar["decisive_margin"] * scale
            agree = np.argmax(out, axis=1) == np.argmax(ref, axis=1)
            dec = float(np.mean(agree[decisive])) if decisive.any() else 1.0
            rel = c["max_abs_diff"] / scale
            worst["max_rel_diff"] = max(worst["max_rel_diff"], rel)
            worst["top1_agreement_decisive"] = min(worst["top1_agreement_decisive"], dec)
            ok = rel <= bar["max_rel_diff"] and dec >= bar["top1_min"]
        if not ok:
            failures.append(f"λ={lam:g}: max |Δ| {c['max_abs_diff']:.3g}, top-1 agreement {c['top1_agreement']:.1%}")
    return {
        **worst, "lambdas": [float(x) for x in lams], "n_images": int(images.shape[0]),
        "tolerance": tol if bar is None else dict(bar), "per_lambda": per_lambda, "failures": failures,
    }


def parity_failure(report: Dict[str, List[str]]) -> BundleError:
    lines = [f"{pid}: " + "; ".join(f) for pid, f in report.items() if f]
    bars = f"max |Δlogit| ≤ {PARITY_TOL:g}, 100 % top-1"
    if any(pid.endswith(("_fp16", "_int8")) for pid, f in report.items() if f):
        from oat_edge.export.precision import TOLERANCES

        bars += "; " + "; ".join(f"{p}: top-1 ≥ {t['top1_min']:.0%} where fp32 is decisive, "
                                 f"max |Δlogit| ≤ {t['max_rel_diff']:g} × max |logit|"
                                 for p, t in TOLERANCES.items())
    return BundleError(
        "parity gate failed — the exported graph does not reproduce the PyTorch model "
        f"(bar: {bars}); nothing was written. " + " | ".join(lines)
    )
