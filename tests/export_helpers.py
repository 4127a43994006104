"""Shared fixtures of the export tests: checkpoints with non-trivial state and one exported
bundle per session (exports cost seconds; every export test module reuses the same one).

Checkpoints hold random weights, but not a fresh network's trivial state: BN running stats
come from forward passes in train mode with mixed λ at every width, the FiLM generators are
perturbed (γ/β really change with λ), and the classifier is scaled so logits are O(1–10) and
a 1e-4 parity bar means something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from oat_edge.checkpoint import save_checkpoint
from oat_edge.models import create_model

TINY_KW = {"channels": [8, 16, 32]}
DIGITS = {"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.5]}
_CACHE: dict = {}


def digits_images(n: int = 64) -> np.ndarray:
    """Real images: scikit-learn digits scaled to [0, 1], shape [n, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    x = load_digits().images[-n:].astype(np.float32) / 16.0
    return np.ascontiguousarray(x[:, None])


def settle(model, input_shape, seed: int = 0, passes: int = 3):
    """Give a random model the state a trained one has (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for site in model.film_sites():
            for gen in site.generators:
                for p in gen.parameters():
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
    model.train()
    for _ in range(passes):
        for w in model.widths:
            model.set_width(w)
            lam = rng.choice(model.train_lambdas, 32)
            with torch.no_grad():
                model(torch.rand(32, *input_shape, generator=g), lam)
    model.eval()
    with torch.no_grad():
        model.classifier.weight.mul_(15.0)
    model.set_width(model.widths[-1])
    return model


def make_checkpoint(path: Path, arch: str = "resnet_tiny", arch_kwargs=None, method: str = "oats",
                    dataset=None, seed: int = 0, input_shape=(1, 8, 8)) -> Path:
    arch_kwargs = dict(TINY_KW if arch_kwargs is None else arch_kwargs)
    torch.manual_seed(seed)
    model = create_model(arch, **arch_kwargs)
    if model.use_film:
        settle(model, input_shape, seed)
    payload = {
        "arch": arch,
        "arch_kwargs": {**arch_kwargs, "widths": list(model.widths), "train_lambdas": list(model.train_lambdas)},
        "model": model.state_dict(),
        "method": method,
        "dataset": dict(dataset or DIGITS),
        "epoch": 3,
        "config": {"note": "random weights with settled BN/FiLM state (export tests)"},
    }
    return save_checkpoint(path, payload)


def tiny_checkpoint(tmp_path_factory) -> Path:
    if "ckpt" not in _CACHE:
        _CACHE["ckpt"] = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    return _CACHE["ckpt"]


TINY_BAKE = (0.0, 0.3)


def tiny_bundle(tmp_path_factory) -> Path:
    """resnet_tiny, widths 0.5/0.75/1, baked λ 0 and 0.3, no engines."""
    if "bundle" not in _CACHE:
        from oat_edge.export import export_bundle

        ckpt = tiny_checkpoint(tmp_path_factory)
        _CACHE["bundle"] = export_bundle(ckpt, tmp_path_factory.mktemp("bundles") / "tiny", bake=TINY_BAKE,
                                         tensorrt="off", progress=False, parity_images=48)
    return _CACHE["bundle"]


def load_ckpt_model(path):
    from oat_edge.checkpoint import load_model

    model, _ = load_model(path)
    return model.eval()


def leaves_nothing(parent: Path, name: str) -> bool:
    """No bundle folder and no temporary sibling of it."""
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]
