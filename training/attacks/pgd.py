"""Sign-gradient attacks on the cross-entropy: PGD-n (Madry et al. 2018), FGSM (Goodfellow et
al. 2015) and MI-FGSM (Dong et al. 2018). One class: they differ only in steps, step size,
random start and momentum."""

from __future__ import annotations

from oat_edge.training.attacks.base import Attack, _check_count, _check_number, input_grad, project, uniform_start


class SignGradientAttack(Attack):
    """``steps`` steps of ``step_size``·sign(∇ CE), each projected onto the ε-ball ∩ [0, 1].

    ``random_start``: start from a uniform point of the ε-ball (PGD). ``momentum`` > 0: MI-FGSM's
    accumulated gradient, each step's gradient L1-normalised per sample before it is added."""

    def __init__(self, name: str, eps: float, steps: int, step_size: float, random_start: bool, momentum: float = 0.0):
        self.name = name
        super().__init__(eps)
        _check_number(name, "step_size", step_size)
        _check_number(name, "momentum", momentum)
        self.steps = _check_count(name, "steps", steps)
        self.step_size = float(step_size)
        self.random_start = bool(random_start)
        self.momentum = float(momentum)

    def describe(self) -> dict:
        d = {"name": self.name, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
             "random_start": self.random_start, "loss": "ce"}
        if self.momentum:
            d["momentum"] = self.momentum
        return d

    def perturb(self, forward, x, y, lo, hi, generator):
        import torch
        import torch.nn.functional as F

        if self.random_start and self.eps > 0:
            x_adv = uniform_start(x, self.eps, lo, hi, generator)
        else:
            x_adv = x.clone()
        velocity = torch.zeros_like(x) if self.momentum else None
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            grad = input_grad(F.cross_entropy(forward(x_adv), y, reduction="sum"), x_adv)
            if velocity is not None:
                l1 = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                velocity = self.momentum * velocity + grad / l1
                grad = velocity
            x_adv = project(x_adv.detach() + self.step_size * grad.sign(), lo, hi)
        return x_adv
