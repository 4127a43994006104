"""training/saliency.py: input-gradient maps and Etmann et al.'s alignment, checked against the
closed forms of a linear classifier, plus shapes and mode handling on a real OAT model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oat_edge.errors import ConfigError
from oat_edge.models import create_model
from oat_edge.training.saliency import gradient_alignment, plot_saliency, saliency_maps


class Linear(nn.Module):
    """logits = W·flatten(x) + b, with the mode interface the saliency functions use."""

    def __init__(self, n_in: int, n_cls: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(n_cls, n_in, generator=g))
        self.b = nn.Parameter(torch.randn(n_cls, generator=g))
        self.lam, self.width = 0.0, 1.0

    def set_mode(self, lam, width):
        self.lam, self.width = float(lam), float(width)
        return self

    def forward(self, x):
        return torch.flatten(x, 1) @ self.W.T + self.b


def _data(n=5, shape=(1, 4, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_linear_model_closed_forms():
    x, y = _data()
    m = Linear(16, 3)
    W, b = m.W.detach().double(), m.b.detach().double()
    xf = x.flatten(1).double()
    # ∇x CE = Σ_k (softmax_k − [k = y]) W_k
    p = torch.softmax(xf @ W.T + b, dim=1)
    expect = ((p - F.one_hot(y, 3).double()) @ W).reshape(x.shape)
    got = saliency_maps(m, x, y, 0.3, 1.0)
    assert got.shape == x.shape
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-6)
    # α = |⟨x, W_y⟩| / ‖W_y‖, mean over images; normalised: also divided by ‖x‖
    wy = W[y]
    alpha = ((xf * wy).sum(1).abs() / wy.norm(dim=1))
    assert gradient_alignment(m, x, y, 0.3) == pytest.approx(float(alpha.mean()), rel=1e-6)
    cos = alpha / xf.norm(dim=1)
    assert gradient_alignment(m, x, y, 0.3, normalized=True) == pytest.approx(float(cos.mean()), rel=1e-6)
    # an image along its class's weight vector is perfectly aligned
    x2 = W[0].float().reshape(1, 1, 4, 4)
    assert gradient_alignment(m, x2, [0], 0.0, normalized=True) == pytest.approx(1.0, abs=1e-6)
    assert m.W.grad is None  # only the input's gradient is taken


def test_oat_model_shapes_and_mode_restored(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet_tiny", channels=[4, 8, 8], widths=[0.5, 1.0])
    model.set_mode(1.0, 1.0)
    model.train()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    maps = {lam: saliency_maps(model, x, y, lam, 0.5) for lam in (0.0, 0.4)}
    for m in maps.values():
        assert m.shape == (6, 1, 8, 8) and torch.isfinite(m).all() and m.abs().sum() > 0
    assert not torch.equal(maps[0.0], maps[0.4])  # λ changes the network (FiLM, BN branch)
    # each image's map is its own loss's gradient (eval mode: no batch coupling)
    one = saliency_maps(model, x[2:3], y[2:3], 0.4, 0.5)
    torch.testing.assert_close(one[0], maps[0.4][2], rtol=1e-4, atol=1e-7)
    a = gradient_alignment(model, x, y, 0.4, 0.5)
    c = gradient_alignment(model, x, y, 0.4, 0.5, normalized=True)
    assert a > 0 and 0 < c <= 1
    assert (model.lam, model.width, model.training) == (1.0, 1.0, True)
    assert all(p.grad is None for p in model.parameters())
    out = plot_saliency(maps, tmp_path / "s" / "sal.png", titles={0.0: "OAT λ=0"})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = plot_saliency({0.1: torch.randn(2, 3, 5, 5)}, tmp_path / "rgb.png")
    assert rgb.stat().st_size > 0


def test_bad_inputs():
    m = Linear(16, 3)
    with pytest.raises(ConfigError, match="labels"):
        saliency_maps(m, torch.rand(3, 1, 4, 4), [0, 1], 0.0)
    with pytest.raises(ConfigError, match="NCHW"):
        gradient_alignment(m, torch.rand(3, 16), [0, 1, 2], 0.0)
    with pytest.raises(ConfigError, match="no saliency maps"):
        plot_saliency({}, "x.png")
    with pytest.raises(ConfigError, match=r"\[N, 1 or 3, H, W\]"):
        plot_saliency({0.0: torch.rand(2, 2, 4, 4)}, "x.png")
