"""FLOPs and parameters of one (λ, width) path of an OAT model.

FLOPs here are multiply-accumulates of convolutions and linear layers, the convention of the
OAT paper (ResNet-34 on 32×32: ≈1.16 G unconditioned, ≈1.18 G with FiLM). The FiLM
generators run once per λ, not per image; ``film_generator_flops`` reports them separately and
``total`` includes them, as in the paper's conditioned figure.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from oat_edge.layers import DualBatchNorm2d, FiLM, SlimmableConv2d, SlimmableLinear


@torch.no_grad()
def count_path(model, input_shape: Sequence[int], width: float, lam: float = 1.0) -> Dict[str, int]:
    """{'conv_linear_flops', 'film_generator_flops', 'total_flops', 'params'} for one image
    of ``input_shape`` (C, H, W) at ``width``; params counts what the path uses (active
    slices, one BN branch, the FiLM generators of that width)."""
    was_training = model.training
    model.eval()
    prev_width, prev_lam = model.width, model.lam
    model.set_mode(lam, width)
    macs = [0]

    def conv_hook(m: SlimmableConv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        macs[0] += out.numel() // out.shape[0] * (m.in_active // m.groups) * k

    def linear_hook(m: SlimmableLinear, inp, out):
        macs[0] += m.in_active * m.out_active

    hooks = []
    for m in model.modules():
        if isinstance(m, SlimmableConv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, SlimmableLinear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        model(torch.zeros(1, *input_shape), lam)
    finally:
        for h in hooks:
            h.remove()
        model.set_mode(prev_lam, prev_width)
        model.train(was_training)

    i = model.widths.index(float(width)) if float(width) in model.widths else model._width_idx
    film_flops, params = 0, 0
    for m in model.modules():
        if isinstance(m, (SlimmableConv2d, SlimmableLinear)):
            m.width_idx = i
            w, b = m.active_weight()
            params += w.numel() + (0 if b is None else b.numel())
        elif isinstance(m, DualBatchNorm2d):
            params += 2 * m.branch(lam > 0, i).num_features
        elif isinstance(m, FiLM):
            w1, b1, w2, b2 = m.generator_weights(i)
            params += w1.numel() + b1.numel() + w2.numel() + b2.numel()
            film_flops += w1.numel() + w2.numel()
    model.set_width(prev_width)
    return {
        "conv_linear_flops": int(macs[0]),
        "film_generator_flops": int(film_flops),
        "total_flops": int(macs[0] + film_flops),
        "params": int(params),
    }
