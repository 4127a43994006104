"""Auto-PGD (APGD; Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020), L∞, written from the paper.

What makes it stronger than PGD-n with a fixed step:
- the step size starts at 2ε and is halved per sample at checkpoints w_j = ⌈p_j·N⌉ with
  p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), when either fewer than
  ρ = 75 % of the steps since the last checkpoint raised the loss, or the step was not halved
  at the last checkpoint and the best loss has not moved since; after a halving the iterate
  restarts from the best point found so far;
- a momentum step x_{k+1} = P(x_k + α(z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1})), α = 0.75,
  with z_{k+1} = P(x_k + η·sign ∇L(x_k));
- losses: cross-entropy, or the Difference of Logits Ratio, which does not vanish when the
  logits are rescaled (a common source of masked gradients):
      DLR(x, y)   = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)
      DLR-T(x, y) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)   (targeted, class t)
  where z_π1 ≥ z_π2 ≥ … are the sorted logits;
- restarts from fresh random points of the ε-ball, run only on the images still classified
  correctly (a restart can only lower robust accuracy).

For accuracy, every iterate is checked: an image counts as broken as soon as any iterate
inside the ε-ball ∩ [0, 1] is misclassified, and that iterate is what the attack returns.
"""

from __future__ import annotations

import math

from oat_edge.errors import ConfigError
from oat_edge.training.attacks.base import Attack, _check_count, input_grad, project, uniform_start

RHO = 0.75  # share of loss-raising steps below which the step size is halved
ALPHA = 0.75  # weight of the new sign step against the momentum term
LOSSES = ("ce", "dlr", "dlr-t")


def step_checkpoints(steps: int) -> list:
    """The iterations w_1 < w_2 < … < N at which APGD reconsiders its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(round(q * steps, 6)) for q in p[1:] if q <= 1.0})
    return [w for w in points if 0 < w <= steps]


def _per_sample_loss(kind: str, logits, y, target=None):
    import torch
    import torch.nn.functional as F

    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    z_sorted, _ = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, y[:, None])[:, 0]
    if kind == "dlr":
        # Largest logit other than the true class: the first sorted one unless that is y.
        top_is_y = logits.argmax(1) == y
        z_other = torch.where(top_is_y, z_sorted[:, 1], z_sorted[:, 0])
        return -(z_y - z_other) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)
    z_t = logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


class APGD(Attack):
    """APGD with the CE loss (``apgd-ce``), the DLR loss (``apgd-dlr``) or the targeted DLR
    loss (``apgd-t``: one run per target class, the ``targets`` classes with the highest clean
    logits other than the true one)."""

    def __init__(self, name: str, eps: float, loss: str = "ce", steps: int = 100, restarts: int = 1,
                 targets: int = 3):
        self.name = name
        super().__init__(eps)
        if loss not in LOSSES:
            raise ConfigError(f"attack {name}: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss = loss
        self.steps = _check_count(name, "steps", steps)
        self.restarts = _check_count(name, "restarts", restarts)
        self.targets = _check_count(name, "targets", targets) if loss == "dlr-t" else 0

    def describe(self) -> dict:
        d = {"name": self.name, "eps": self.eps, "steps": self.steps, "restarts": self.restarts,
             "loss": self.loss, "step_size": "adaptive (2ε, halved at checkpoints)", "random_start": True}
        if self.targets:
            d["targets"] = self.targets
        return d

    def perturb(self, forward, x, y, lo, hi, generator):
        import torch

        with torch.no_grad():
            clean_logits = forward(x)
        n_classes = clean_logits.shape[1]
        need = {"ce": 2, "dlr": 3, "dlr-t": 4}[self.loss]
        if n_classes < need:
            raise ConfigError(f"attack {self.name}: the {self.loss} loss needs at least {need} classes, the model has {n_classes}")
        x_out = x.clone()
        robust = clean_logits.argmax(1) == y  # misclassified images need no attack
        runs = [None]
        if self.loss == "dlr-t":
            # Targets: the highest-ranked classes other than the true one, one run each.
            order = clean_logits.argsort(dim=1, descending=True)
            others = order[order != y[:, None]].view(x.shape[0], n_classes - 1)
            runs = [others[:, k] for k in range(min(self.targets, n_classes - 1))]
        for target in runs:
            for _ in range(self.restarts):
                idx = robust.nonzero(as_tuple=True)[0]
                if idx.numel() == 0:
                    return x_out
                t = None if target is None else target[idx]
                # The run sees only these images; its own subsets index into them.
                run_forward = lambda z, sub, idx=idx: forward(z, idx[sub])  # noqa: E731
                adv, broken = self._run(run_forward, x[idx], y[idx], lo[idx], hi[idx], t, generator)
                x_out[idx] = adv
                robust[idx[broken]] = False
        return x_out

    def _run(self, forward, x, y, lo, hi, target, generator):
        """One APGD run from a random start: (the attack's point per image, broken mask).

        An image leaves the run as soon as an iterate breaks it (that iterate is its result),
        so the batch shrinks as the attack succeeds; the rest end on their highest-loss point."""
        import torch

        n = x.shape[0]
        out = x.clone()
        broken_all = torch.zeros(n, dtype=torch.bool, device=x.device)
        ids = torch.arange(n, device=x.device)
        shape = (n,) + (1,) * (x.dim() - 1)
        s = {"x": x, "y": y, "lo": lo, "hi": hi}  # per-image state of the images still in the run
        if target is not None:
            s["target"] = target

        def evaluate(z):
            z = z.detach().requires_grad_(True)
            logits = forward(z, ids)  # ids: the run's images still in it (their per-sample λ)
            loss = _per_sample_loss(self.loss, logits, s["y"], s.get("target"))
            grad = input_grad(loss.sum(), z)
            return loss.detach(), logits.argmax(1) != s["y"], grad.detach()

        def retire(mask):
            nonlocal ids
            if not bool(mask.any()):  # the common case: no copy of the state on this step
                return
            out[ids[mask]] = s["cur"][mask]
            broken_all[ids[mask]] = True
            keep = ~mask
            ids = ids[keep]
            for key in s:
                s[key] = s[key][keep]

        s["cur"] = uniform_start(x, self.eps, lo, hi, generator)
        s["step"] = torch.full(shape, 2.0 * self.eps, dtype=x.dtype, device=x.device)
        s["loss"], fooled, s["grad"] = evaluate(s["cur"])
        _start_tracking(s)
        retire(fooled)
        checkpoints = set(step_checkpoints(self.steps))
        last_checkpoint = 0
        for k in range(self.steps):
            if ids.numel() == 0:
                break
            cur, prev, lo_, hi_ = s["cur"], s["prev"], s["lo"], s["hi"]
            z = project(cur + s["step"] * s["grad"].sign(), lo_, hi_)
            new = z if k == 0 else project(cur + ALPHA * (z - cur) + (1.0 - ALPHA) * (cur - prev), lo_, hi_)
            s["prev"], s["cur"] = cur, new
            loss, fooled, s["grad"] = evaluate(new)
            _track_best(s, loss, new)
            retire(fooled)
            if (k + 1) in checkpoints:
                _halve_stalled(s, (k + 1) - last_checkpoint, x.dtype)
                last_checkpoint = k + 1
        out[ids] = s["best"]
        return out, broken_all


def _start_tracking(s: dict) -> None:
    """The run's bookkeeping after the first evaluation at the start point."""
    import torch

    n, device = s["loss"].shape[0], s["loss"].device
    s["prev"], s["best"], s["grad_best"] = s["cur"].clone(), s["cur"].clone(), s["grad"].clone()
    s["best_loss"], s["best_at_checkpoint"] = s["loss"].clone(), s["loss"].clone()
    s["rises"] = torch.zeros(n, dtype=torch.int64, device=device)
    s["halved_last"] = torch.zeros(n, dtype=torch.bool, device=device)


def _track_best(s: dict, loss, new) -> None:
    """Count loss rises and keep each image's highest-loss point (and its gradient)."""
    import torch

    s["rises"] += (loss > s["loss"]).to(torch.int64)
    s["loss"] = loss
    better = loss > s["best_loss"]
    s["best_loss"] = torch.where(better, loss, s["best_loss"])
    s["best"][better] = new[better]
    s["grad_best"][better] = s["grad"][better]


def _halve_stalled(s: dict, period: int, dtype) -> None:
    """At a checkpoint: halve the step of the images whose loss stalled over the period."""
    stalled = s["rises"].to(dtype) < RHO * period
    stuck = ~s["halved_last"] & (s["best_loss"] <= s["best_at_checkpoint"])
    halve = stalled | stuck
    s["step"][halve] /= 2.0
    # The halved images restart from their best point, without momentum across the jump.
    s["cur"][halve] = s["best"][halve]
    s["prev"][halve] = s["best"][halve]
    s["grad"][halve] = s["grad_best"][halve]
    s["halved_last"] = halve
    s["best_at_checkpoint"] = s["best_loss"].clone()
    s["rises"].zero_()
