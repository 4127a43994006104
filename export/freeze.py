"""Freeze one path of an OAT/OATS model into a plain torch module that ONNX export can take.

A *path* is one (BN branch × width): BN_c (λ = 0) or BN_a (λ > 0) at one trained width. The
frozen module computes exactly ``model(images, λ)`` of that path, with

- slimmed weights: every slimmable conv/linear becomes a plain ``nn.Conv2d``/``nn.Linear``
  holding only the active slice;
- BN folded into the convolution that feeds it (when that conv's output feeds nothing else);
  a BN with no such conv (pre-activation WRN blocks, WRN's last BN) becomes a per-channel
  affine (one Mul, one Add);
- FiLM γ/β read from the flat ``film`` input (layout ``model.film_layout(width)``), or, for a
  *baked* path, FiLM turned into constants and folded like BN.

We do not re-describe architectures: the model's own ``features`` code is traced with
``torch.fx`` (after swapping the width-dependent layers for plain ones), and folding works on
the traced graph, where "the conv output feeds only this BN" is a fact we can check.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from oat_edge.errors import CheckpointError, ConfigError
from oat_edge.layers import Cond, FiLM, SlimmableConv2d, SlimmableLinear
from oat_edge.mode import match_width


class ChannelAffine(nn.Module):
    """y = x · scale + shift per channel (NCHW). What an unfoldable BN or a constant FiLM becomes."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    @property
    def flat(self):
        return self.scale.reshape(-1), self.shift.reshape(-1)


class _FiLMFromVector(nn.Module):
    """FiLM site of a frozen path: γ, β are slices of the flat ``film`` input."""

    def __init__(self, offset: int, channels: int):
        super().__init__()
        self.offset, self.channels = int(offset), int(channels)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        off, c = self.offset, self.channels
        gamma = cond.film[off : off + c].reshape(1, c, 1, 1)
        beta = cond.film[off + c : off + 2 * c].reshape(1, c, 1, 1)
        return x * gamma + beta


class _BakedFiLM(nn.Module):
    """FiLM site of a baked path: constants, folded later like a BN."""

    def __init__(self, gamma: torch.Tensor, beta: torch.Tensor):
        super().__init__()
        self.affine = ChannelAffine(gamma, beta)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.affine(x)


class _FilmPathWrapper(nn.Module):
    def __init__(self, model, adv: bool):
        super().__init__()
        self.model, self.adv = model, adv

    def forward(self, images: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        return self.model.features(images, Cond(code=None, adv=self.adv, film=film))


class _BakedPathWrapper(nn.Module):
    def __init__(self, model, adv: bool):
        super().__init__()
        self.model, self.adv = model, adv

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images, Cond(code=None, adv=self.adv, film=None))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ChannelAffine) or super().is_leaf_module(m, qualname)


def check_exportable(model) -> None:
    """OAT/OATS models only: a network with FiLM sites (λ-conditioned)."""
    if not getattr(model, "use_film", False) or not model.film_sites():
        raise CheckpointError(
            "this checkpoint has no FiLM conditioning (film=False): it is not an OAT/OATS model, "
            "so there is no λ to export; export needs a checkpoint trained with --method oat or oats"
        )


def _set_child(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent_name, _, child = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _plain_layers(model: nn.Module) -> None:
    """Swap slimmable layers for plain ones holding the active slice (width already set)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, SlimmableConv2d):
            w, b = m.active_weight()
            conv = nn.Conv2d(
                w.shape[1] * m.groups, w.shape[0], m.kernel_size, stride=m.stride, padding=m.padding,
                dilation=m.dilation, groups=m.groups, bias=b is not None,
            )
            conv.weight = nn.Parameter(w.detach().clone())
            if b is not None:
                conv.bias = nn.Parameter(b.detach().clone())
            _set_child(model, name, conv)
        elif isinstance(m, SlimmableLinear):
            w, b = m.active_weight()
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            lin.weight = nn.Parameter(w.detach().clone())
            if b is not None:
                lin.bias = nn.Parameter(b.detach().clone())
            _set_child(model, name, lin)


def _replace_film(model, width_idx: int, film_vector: Optional[torch.Tensor]) -> None:
    for name, m in list(model.named_modules()):
        if isinstance(m, FiLM):
            off, c = m.flat_offsets[width_idx], m.channels_at(width_idx)
            if film_vector is None:
                new = _FiLMFromVector(off, c)
            else:
                new = _BakedFiLM(film_vector[off : off + c], film_vector[off + c : off + 2 * c])
            _set_child(model, name, new)


def _bn_affine(bn: nn.BatchNorm2d):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _fold(gm: fx.GraphModule) -> None:
    """Fold BNs and constant affines into the conv before them; turn the rest into affines and
    merge chains of affines. Repeats until nothing changes."""
    modules = dict(gm.named_modules())

    def module_of(node):
        return modules.get(node.target) if node.op == "call_module" else None

    # Every BN becomes either part of its conv or a ChannelAffine.
    for node in list(gm.graph.nodes):
        bn = module_of(node)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        src = node.args[0]
        conv = module_of(src)
        if isinstance(conv, nn.Conv2d) and len(src.users) == 1:
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
            conv.weight, conv.bias = w, b
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
        else:
            affine = ChannelAffine(*_bn_affine(bn))
            _set_child(gm, node.target, affine)
            modules[node.target] = affine

    changed = True
    while changed:
        changed = False
        for node in list(gm.graph.nodes):
            aff = module_of(node)
            if not isinstance(aff, ChannelAffine):
                continue
            src = node.args[0]
            prev = module_of(src)
            if len(src.users) != 1 or not isinstance(prev, (nn.Conv2d, ChannelAffine)):
                continue
            scale, shift = aff.flat
            if isinstance(prev, nn.Conv2d):
                bias = prev.bias if prev.bias is not None else torch.zeros_like(scale)
                prev.weight = nn.Parameter(prev.weight * scale.reshape(-1, 1, 1, 1))
                prev.bias = nn.Parameter(bias * scale + shift)
            else:
                s0, t0 = prev.flat
                merged = ChannelAffine(s0 * scale, t0 * scale + shift)
                _set_child(gm, src.target, merged)
                modules[src.target] = merged
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            changed = True


def _drop_dropout(gm: fx.GraphModule) -> None:
    # Inference: dropout is the identity (it was traced with training=False).
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (F.dropout, torch.dropout):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


@torch.no_grad()
def freeze_path(model, width: float, bn: str, film_vector: Optional[torch.Tensor] = None) -> fx.GraphModule:
    """A frozen, eval-mode module for one path.

    ``film_vector`` None: ``module(images, film) -> logits`` (FiLM γ/β from the flat vector).
    ``film_vector`` given (the vector of one λ at this width): ``module(images) -> logits``
    with BN and FiLM folded into the weights (a baked path).
    """
    if bn not in ("c", "a"):
        raise ConfigError(f"bn must be 'c' or 'a', got {bn!r}")
    check_exportable(model)
    width = match_width(width, model.widths)
    m = copy.deepcopy(model).eval()
    m.set_width(width)
    width_idx = m.widths.index(width)
    for p in m.parameters():
        p.requires_grad_(False)
    if film_vector is not None:
        film_vector = torch.as_tensor(film_vector, dtype=torch.float32).reshape(-1)
        if film_vector.numel() != m.film_size(width):
            raise ConfigError(f"film vector has {film_vector.numel()} values, width {width:g} needs {m.film_size(width)}")
    _plain_layers(m)
    _replace_film(m, width_idx, film_vector)
    # The trace reaches only the BN branch this path routes to, at this width; the other
    # branches and widths are dropped with the unused submodules below.
    adv = bn == "a"
    wrapper = _FilmPathWrapper(m, adv) if film_vector is None else _BakedPathWrapper(m, adv)
    graph = _Tracer().trace(wrapper)
    gm = fx.GraphModule(wrapper, graph)
    _drop_dropout(gm)
    _fold(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    gm.eval()
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm


def folded_bn_count(gm: fx.GraphModule) -> dict:
    """How the BNs of a frozen path ended up (for tests and the manifest): remaining BNs (should
    be 0) and per-channel affines (BNs with no conv before them, and baked FiLM chains)."""
    mods = dict(gm.named_modules())
    calls = [mods[n.target] for n in gm.graph.nodes if n.op == "call_module"]
    return {
        "batchnorm": sum(isinstance(x, nn.BatchNorm2d) for x in calls),
        "affine": sum(isinstance(x, ChannelAffine) for x in calls),
        "conv": sum(isinstance(x, nn.Conv2d) for x in calls),
    }
