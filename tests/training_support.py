"""A quickly trained tiny digits model shared by the attack and evaluation tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from oat_edge.lambda_code import S1
from oat_edge.models import create_model
from oat_edge.training.datasets import dataset_info, load_dataset, make_loader

# FiLM centred on γ = 1 (the digits recipe): these helpers train for a few seconds only.
TINY_ARCH_KWARGS = {"widths": [0.5, 1.0], "channels": [8, 16, 32], "film_init": "identity"}


def _tiny_run(epochs: int, seed: int):
    """(model, loader, optimizer, schedule, generator) of a short Adam/one-cycle digits run."""
    torch.manual_seed(seed)
    info = dataset_info("digits")
    model = create_model("resnet_tiny", mean=info["mean"], std=info["std"], **TINY_ARCH_KWARGS)
    loader = make_loader(load_dataset("digits", "train"), 32, train=True, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, total_steps=epochs * len(loader))
    return model, loader, opt, sched, torch.Generator().manual_seed(seed)


def train_clean_tiny(epochs: int = 4, seed: int = 0):
    """resnet_tiny on digits, clean training with per-sample λ from S1 at both widths (so every
    BN branch is trained): ~95 % test accuracy in a few CPU seconds."""
    model, loader, opt, sched, gen = _tiny_run(epochs, seed)
    model.train()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            lam = torch.tensor(S1)[torch.randint(0, len(S1), (x.shape[0],), generator=gen)]
            opt.zero_grad()
            for width in model.widths:
                model.set_width(width)
                F.cross_entropy(model(x, lam), y).backward()
            opt.step()
            sched.step()
    model.set_width(1.0)
    return model.eval()


def train_adversarial_tiny(epochs: int = 6, seed: int = 0, eps: float = 0.15):
    """resnet_tiny on digits, PGD-AT at λ = 1 (PGD-5, step ε/4) at full width: a model with
    real robustness at ε (≈ 50-60 % under APGD at ε = 0.15) in some 20 CPU seconds."""
    from oat_edge.training.attacks import make_attack

    model, loader, opt, sched, gen = _tiny_run(epochs, seed)
    attack = make_attack("pgd5", eps=eps, step_size=eps / 4)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            x_adv = attack(model, x, y, 1.0, generator=gen)
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(x_adv, 1.0), y).backward()
            opt.step()
            sched.step()
    return model.eval()
