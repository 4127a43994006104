"""SA and robust accuracy of a bundle's fp16 / int8 files (``oat-edge export --calibrate``
with ``--precision``), measured on the deployed ONNX graphs themselves.

Quantization can erase robustness, or fake it: rounding flattens the gradients an attack
follows, so a white-box attack on the reduced graph's own (useless) gradients would overstate
its robustness. Each reduced-precision mode is therefore scored, on the deployed file
(onnxruntime), as the per-image worst case of three attacks, at least as many as fp32 gets:

- ``transfer``: the adversarial images of the fp32 model (the calibration's whole ensemble,
  same seeds), i.e. what an attacker with the float model achieves against the deployed graph;
- ``whitebox_twin``: the ensemble's gradient attacks run against a torch twin of the file that
  computes what it computes with usable gradients: for int8, weights rounded to int8 per output
  channel and the input of every conv/linear rounded per tensor (int8, or uint8 with a zero point
  for ``--int8-activations u8``) with the MinMax range of the same calibration images; for fp16,
  weights and every conv/linear input rounded to half precision; rounding with straight-through
  gradients;
- ``square_onnx``: the gradient-free Square attack run against the deployed ONNX file itself, on
  the images the first two left standing. It needs only the file's logits, so it attacks
  exactly what runs, however the file's rounding bends its gradients.

``worst_case`` counts an image only if the file classifies it correctly clean and under every
one of those. The twin's top-1 agreement with the file on clean images is recorded
(``twin_agreement``): a twin far from the file would make ``whitebox_twin`` meaningless. Each
record lists the attacks behind each entry (``attacks``), so a reader can check that a
precision was scored with every attack fp32 was.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

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


def _rounded_layer(layer, weight, round_input):
    """``layer`` (a Conv2d or Linear) computing on ``weight`` (a constant) and on its input passed
    through ``round_input`` (straight-through rounding, so gradients still reach the image)."""
    import torch.nn.functional as F
    from torch import nn

    class RoundedLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer
            self.register_buffer("w", weight)

        def forward(self, x):
            x, m = round_input(x), self.layer
            if isinstance(m, nn.Conv2d):
                return F.conv2d(x, self.w, m.bias, m.stride, m.padding, m.dilation, m.groups)
            return F.linear(x, self.w, m.bias)

    return RoundedLayer()


def _conv_linear_layers(net) -> dict:
    from torch import nn

    return {name: m for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _replace_layers(net, make) -> None:
    """Every Conv2d/Linear of ``net`` (by name) replaced with ``make(name, layer)``."""
    for name, m in _conv_linear_layers(net).items():
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, make(name, m))


def fake_quant_twin(frozen, feeds: List[Dict[str, np.ndarray]], symmetric: bool = True):
    """A copy of the frozen path ``frozen`` (export.freeze) with every Conv2d/Linear fake-
    quantized; activation ranges are the MinMax of each layer's input over ``feeds`` (the int8
    file's calibration batches), turned into scales as onnxruntime does (``activation_qparams``)."""
    import copy

    import torch

    twin = copy.deepcopy(frozen).eval()
    layers = _conv_linear_layers(twin)
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

    def make(name, m):
        qparams = activation_qparams(lo[name], hi[name], symmetric)
        return _rounded_layer(m, quantize_weight(m.weight), lambda x: fake_quant(x, *qparams))

    _replace_layers(twin, make)
    return twin


def _fp16_round(x):
    """x rounded to the nearest half-precision value, identity backward (straight-through)."""
    import torch

    return x + (x.to(torch.float16).to(x.dtype) - x).detach()


def fp16_twin(frozen):
    """A copy of the frozen path with every Conv2d/Linear on fp16-rounded weights and inputs
    (straight-through gradients): what the fp16 file computes, differentiable."""
    import copy

    import torch

    twin = copy.deepcopy(frozen).eval()
    _replace_layers(twin, lambda name, m: _rounded_layer(m, m.weight.detach().to(torch.float16).float(), _fp16_round))
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


class _OnnxModel:
    """The deployed file as an attack target: ``model(x, λ)`` runs the onnxruntime session (no
    gradients: only a query attack such as Square can use it)."""

    def __new__(cls, session, film: Optional[np.ndarray]):
        import torch
        from torch import nn

        class Deployed(nn.Module):
            def forward(self, x, lam=None):
                feed = {"images": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
                if film is not None:
                    feed["film"] = film
                return torch.from_numpy(session.run(["logits"], feed)[0].astype(np.float32))

        return Deployed().eval()


def _gradient_attacks(attack_objs: Sequence) -> list:
    return [a for a in attack_objs if not getattr(a, "gradient_free", False)]


def _square_for(attack_objs: Sequence, eps: float):
    """The ensemble's Square attack, or one with the default budget at the ensemble's ε."""
    from oat_edge.training.attacks import make_attack

    for a in attack_objs:
        if getattr(a, "gradient_free", False):
            return a
    return make_attack("square", eps=eps)


class _PrecisionScorer:
    """Scores the reduced-precision files of one export (see the module docstring); holds the
    onnxruntime sessions and twins so each file is opened and each twin built once."""

    def __init__(self, job, bundle_dir, entries: Dict[str, List[dict]], attack_objs: Sequence, seed: int):
        self.job, self.bundle_dir, self.attack_objs, self.seed = job, bundle_dir, list(attack_objs), int(seed)
        self.table, self.flat = ModeTable.from_manifest({"model": {"widths": job.widths}, "paths": entries["paths"],
                                                         "baked": entries["baked"]})
        self.square = _square_for(self.attack_objs, self.attack_objs[0].eps)
        self.sessions: Dict[str, Any] = {}
        self.twins: Dict[str, Any] = {}

    def _gen(self, k: int):
        import torch

        return torch.Generator(device="cpu").manual_seed(self.seed * 1000 + k)

    def transfer_images(self, x, y, lam) -> list:
        """The fp32 model's adversarial images at this mode, one array per ensemble attack."""
        return [a(self.job.model, x, y, lam, generator=self._gen(k)).numpy() for k, a in enumerate(self.attack_objs)]

    def _twin(self, e: dict, lam: float, w: float, precision: str):
        from oat_edge.export.precision import calibration_feeds
        from oat_edge.export.freeze import freeze_path
        from oat_edge.mode import bn_branch

        if e["id"] in self.twins:
            return self.twins[e["id"]]
        model, tables, bn = self.job.model, self.job.tables, e["bn"]
        baked = None if e["kind"] == "path" else film_vector(tables, e["lam"], w)
        frozen = freeze_path(model, w, bn, film_vector=baked)
        if precision == "fp16":
            twin = fp16_twin(frozen)
        else:  # int8 ranges as the file's: a BN path over its training λ, a baked graph at its own λ
            if baked is None:
                lams = [t for t in model.train_lambdas if bn_branch(t) == bn] or [lam]
                feeds = calibration_feeds(self.job.quant_images, lams, lambda t, _w=w: film_vector(tables, t, _w))
            else:
                feeds = calibration_feeds(self.job.quant_images, [e["lam"]], None)
            twin = fake_quant_twin(frozen, feeds, self.job.int8_activations == "s8")
        return self.twins.setdefault(e["id"], twin)

    def score(self, x, y, lam: float, w: float, precision: str, transfer: list) -> dict:
        """The calibration record of one (λ, width, precision)."""
        import torch

        from oat_edge.onnxrt import open_session
        from oat_edge.training.evaluate import WORST_CASE, standard_error

        e = self.flat[self.table.index(lam, self.table.width_index(w), precision)]
        sess = self.sessions.get(e["id"]) or self.sessions.setdefault(e["id"], open_session(self.bundle_dir / e["file"]))
        film = film_vector(self.job.tables, lam, w) if e["kind"] == "path" else None
        deployed = _OnnxModel(sess, film)

        def predict(images):
            with torch.no_grad():
                return deployed(torch.as_tensor(images)).argmax(1)

        def correct(images, labels=y) -> np.ndarray:
            return (predict(images) == labels).numpy()

        clean_pred = predict(x)
        clean = (clean_pred == y).numpy()
        ok_t = clean.copy()
        for xa in transfer:
            ok_t &= correct(xa)
        twin = _AsModel(self._twin(e, lam, w, precision), film)
        with torch.no_grad():
            agreement = float((twin(x).argmax(1) == clean_pred).float().mean())
        ok_w = clean.copy()
        for k, attack in enumerate(self.attack_objs):
            if not getattr(attack, "gradient_free", False):
                ok_w &= correct(attack(twin, x, y, lam, generator=self._gen(k)))
        worst = ok_t & ok_w
        # Square on the file itself, on the images still standing (its queries are the cost).
        idx = torch.from_numpy(np.flatnonzero(worst))
        ok_s = worst.copy()
        if len(idx):
            x_sq = self.square(deployed, x[idx], y[idx], lam, generator=self._gen(len(self.attack_objs)))
            ok_s[idx.numpy()] = correct(x_sq, y[idx])
        ra = {"transfer": float(ok_t.mean()), "whitebox_twin": float(ok_w.mean()), "square_onnx": float(ok_s.mean()),
              WORST_CASE: float(ok_s.mean())}
        attacks = {"transfer": [a.name for a in self.attack_objs],
                   "whitebox_twin": [a.name for a in _gradient_attacks(self.attack_objs)],
                   "square_onnx": [f"{self.square.name} ({self.square.queries} queries)"]}
        n = int(x.shape[0])
        return {"lam": float(lam), "width": float(w), "precision": precision, "n": n, "sa": float(clean.mean()),
                "ra": ra, "se": standard_error(ra[WORST_CASE], n), "twin_agreement": agreement, "attacks": attacks}


def evaluate_precisions(job, bundle_dir, entries: Dict[str, List[dict]], calib_set, modes: Sequence,
                        attack_objs: Sequence, max_images: Optional[int], progress: bool, seed: int = 0) -> List[dict]:
    """One calibration record per (λ, width, precision) for every precision of ``job`` beyond
    fp32 (see the module docstring); ``entries`` are the export's manifest entries so far."""
    scorer = _PrecisionScorer(job, bundle_dir, entries, attack_objs, seed)
    x_all, y_all = calib_set.tensors[0], calib_set.tensors[1]
    if max_images is not None:
        x_all, y_all = x_all[: int(max_images)], y_all[: int(max_images)]
    x_all = x_all.float().contiguous()
    records = []
    for lam, w in progress_iter(list(modes), progress, "calibrating fp16/int8"):
        job.model.eval()
        job.model.set_width(w)
        transfer = scorer.transfer_images(x_all, y_all, lam)  # computed once, scored on every precision
        for precision in (p for p in job.precisions if p != "fp32"):
            records.append(scorer.score(x_all, y_all, lam, w, precision, transfer))
    return records
