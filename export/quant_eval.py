"""SA and robust accuracy of a bundle's fp16 / int8 files (``oat-edge export --calibrate``
with ``--precision``), measured on the deployed ONNX graphs themselves.

Quantization can erase robustness, or fake it: rounding flattens the gradients an attack
follows, so a white-box attack on the int8 graph's own (useless) gradients would overstate
its robustness. Each reduced-precision mode therefore gets two attacks, both scored on the
deployed file (onnxruntime):

- ``transfer``: the adversarial images of the fp32 model (the calibration's ensemble, same
  seeds), i.e. what an attacker with the float model achieves against the deployed graph;
- ``whitebox_fq`` (int8): the same ensemble run against a fake-quantized torch twin of the
  file — weights rounded to int8 per output channel, the input of every conv/linear rounded
  per tensor (int8, or uint8 with a zero point for ``--int8-activations u8``) with the MinMax
  range of the same calibration images, rounding with
  straight-through gradients — so the attack sees the quantized function with usable gradients;

and ``worst_case`` counts an image only if the file classifies it correctly clean and under
every one of those images. For fp16 the transferred images are the fp32 white-box images of
a function the fp16 graph reproduces to ~1e-3, so ``transfer`` is its white-box figure too.
The twin's own top-1 agreement with the int8 file on clean images is recorded
(``twin_agreement``): a twin far from the file would make ``whitebox_fq`` meaningless.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from oat_edge.bundle.film import film_vector
from oat_edge.bundle.modes import ModeTable
from oat_edge.progress import progress as progress_iter

QMAX = 127.0


def _ste_round(x):
    """round(x) forward, identity backward (straight-through)."""
    return x + (x.round() - x).detach()


def fake_quant(x, scale: float, zero_point: int = 0, lo: float = -QMAX, hi: float = QMAX):
    """Per-tensor fake quantization with a straight-through gradient: symmetric int8 by default,
    uint8 with ``zero_point`` and [0, 255] for asymmetric activations."""
    return ((_ste_round(x / scale) + zero_point).clamp(lo, hi) - zero_point) * scale


def activation_qparams(lo: float, hi: float, symmetric: bool):
    """(scale, zero point, qmin, qmax) of MinMax calibration as onnxruntime computes them: the
    range always holds 0; symmetric int8 uses max|x| / 127, asymmetric uint8 (max − min) / 255."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        return max(max(-lo, hi), 1e-8) / QMAX, 0, -QMAX, QMAX
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(round(-lo / scale)), 0.0, 255.0


def quantize_weight(w):
    """Per-output-channel symmetric int8 rounding of a conv/linear weight (constant)."""
    import torch

    flat = w.detach().reshape(w.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp(min=1e-12) / QMAX
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (torch.round(w.detach() / scale.reshape(shape)).clamp(-QMAX, QMAX) * scale.reshape(shape))


def _make_fq(module, qparams):
    """``module`` (a Conv2d or Linear) with its input and its weight fake-quantized."""
    import torch.nn.functional as F
    from torch import nn

    class FakeQuant(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer
            self.register_buffer("wq", quantize_weight(layer.weight))

        def forward(self, x):
            x, m = fake_quant(x, *qparams), self.layer
            if isinstance(m, nn.Conv2d):
                return F.conv2d(x, self.wq, m.bias, m.stride, m.padding, m.dilation, m.groups)
            return F.linear(x, self.wq, m.bias)

    return FakeQuant(module)


def fake_quant_twin(frozen, feeds: List[Dict[str, np.ndarray]], symmetric: bool = True):
    """A copy of the frozen path ``frozen`` (export.freeze) with every Conv2d/Linear fake-
    quantized; activation ranges are the MinMax of each layer's input over ``feeds`` (the int8
    file's calibration batches), turned into scales as onnxruntime does (``activation_qparams``)."""
    import copy

    import torch
    from torch import nn

    twin = copy.deepcopy(frozen).eval()
    layers = {name: m for name, m in twin.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    lo = {name: 0.0 for name in layers}
    hi = {name: 0.0 for name in layers}

    def seen(name, t):
        lo[name] = min(lo[name], float(t.detach().min()))
        hi[name] = max(hi[name], float(t.detach().max()))

    hooks = [m.register_forward_pre_hook(lambda mod, args, _n=name: seen(_n, args[0])) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for feed in feeds:
                twin(*[torch.from_numpy(feed[k]) for k in ("images", "film") if k in feed])
    finally:
        for h in hooks:
            h.remove()
    for name, m in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        setattr(parent, child, _make_fq(m, activation_qparams(lo[name], hi[name], symmetric)))
    return twin


class _AsModel:
    """What the attacks call: ``model(x, λ)``, ``modules()``, ``eval()``."""

    def __new__(cls, frozen, film: Optional[np.ndarray]):
        import torch
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = frozen
                self.register_buffer("film", None if film is None else torch.from_numpy(np.asarray(film, np.float32)))

            def forward(self, x, lam=None):
                return self.net(x) if self.film is None else self.net(x, self.film)

        return Wrapped().eval()


def evaluate_precisions(job, bundle_dir, entries: Dict[str, List[dict]], calib_set, modes: Sequence,
                        attack_objs: Sequence, max_images: Optional[int], progress: bool, seed: int = 0) -> List[dict]:
    """One calibration record per (λ, width, precision) for every precision of ``job`` beyond
    fp32 (see the module docstring); ``entries`` are the export's manifest entries so far."""
    from oat_edge.onnxrt import open_session

    model = job.model
    precisions = [p for p in job.precisions if p != "fp32"]
    table, flat = ModeTable.from_manifest({"model": {"widths": job.widths}, "paths": entries["paths"],
                                           "baked": entries["baked"]})
    x_all, y_all = calib_set.tensors[0], calib_set.tensors[1]
    if max_images is not None:
        x_all, y_all = x_all[: int(max_images)], y_all[: int(max_images)]
    images = _Images(x_all, y_all, np.ascontiguousarray(x_all.numpy().astype(np.float32)), y_all.numpy())
    sessions: Dict[str, Any] = {}
    twins: Dict[str, Any] = {}
    records = []
    for lam, w in progress_iter(list(modes), progress, "calibrating fp16/int8"):
        model.eval()
        model.set_width(w)
        # The fp32 model's adversarial images: computed once per mode, transferred to every precision.
        transfer = [attack(model, x_all, y_all, lam, generator=_generator(seed, k)).numpy()
                    for k, attack in enumerate(attack_objs)]
        for precision in precisions:
            e = flat[table.index(lam, table.width_index(w), precision)]
            if e["id"] not in sessions:
                sessions[e["id"]] = open_session(bundle_dir / e["file"])
            film = film_vector(job.tables, lam, w) if e["kind"] == "path" else None
            twin = None
            if precision == "int8":
                if e["id"] not in twins:
                    twins[e["id"]] = _int8_twin(job, e, lam, w)
                twin = _AsModel(twins[e["id"]], film)
            record = _score(lam, images, _predictor(sessions[e["id"]], film), transfer, twin, attack_objs, seed)
            records.append({"lam": float(lam), "width": float(w), "precision": precision, **record})
    return records


class _Images(NamedTuple):
    """The calibration images and labels, as torch tensors (for attacks) and numpy arrays."""

    x: Any
    y: Any
    x_np: np.ndarray
    y_np: np.ndarray


def _generator(seed: int, k: int):
    """The seeded generator of attack ``k``: the same for every file a mode is scored on."""
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed) * 1000 + k)


def _predictor(session, film: Optional[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Top-1 classes of the deployed file (an onnxruntime session) for a batch of images."""
    def predict(x):
        feed = {"images": np.ascontiguousarray(x, dtype=np.float32)}
        if film is not None:
            feed["film"] = film
        return session.run(["logits"], feed)[0].argmax(1)
    return predict


def _int8_twin(job, e: Dict[str, Any], lam: float, w: float):
    """The fake-quantized torch twin of the int8 file of entry ``e``, calibrated on the same
    images (and training λ) as the file."""
    from oat_edge.export.freeze import freeze_path
    from oat_edge.export.precision import calibration_feeds
    from oat_edge.mode import bn_branch

    model, bn = job.model, e["bn"]
    if e["kind"] == "path":
        frozen = freeze_path(model, w, bn)
        lams = [t for t in model.train_lambdas if bn_branch(t) == bn] or [lam]
        feeds = calibration_feeds(job.quant_images, lams, lambda t: film_vector(job.tables, t, w))
    else:
        frozen = freeze_path(model, w, bn, film_vector=film_vector(job.tables, e["lam"], w))
        feeds = calibration_feeds(job.quant_images, [e["lam"]], None)
    return fake_quant_twin(frozen, feeds, job.int8_activations == "s8")


def _score(lam: float, images: _Images, predict, transfer: List[np.ndarray], twin, attack_objs: Sequence,
           seed: int) -> Dict[str, Any]:
    """SA, RA (transfer; whitebox_fq with a ``twin``; worst case) and their standard error of
    one file at λ."""
    import torch

    from oat_edge.training.evaluate import WORST_CASE, standard_error

    y, n = images.y_np, int(images.x.shape[0])
    clean = predict(images.x_np) == y
    ok_t = clean.copy()
    for xa in transfer:
        ok_t &= predict(xa) == y
    ra: Dict[str, float] = {"transfer": float(ok_t.mean())}
    worst = ok_t.copy()
    extra: Dict[str, Any] = {}
    if twin is not None:
        with torch.no_grad():
            twin_pred = twin(images.x).argmax(1).numpy()
        extra["twin_agreement"] = float(np.mean(twin_pred == predict(images.x_np)))
        ok_w = clean.copy()
        for k, attack in enumerate(attack_objs):
            ok_w &= predict(attack(twin, images.x, images.y, lam, generator=_generator(seed, k)).numpy()) == y
        ra["whitebox_fq"] = float(ok_w.mean())
        worst &= ok_w
    ra[WORST_CASE] = float(worst.mean())
    return {"n": n, "sa": float(clean.mean()), "ra": ra, "se": standard_error(ra[WORST_CASE], n), **extra}
