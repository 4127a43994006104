"""Core behaviour users rely on: per-sample dual-BN routing, width slicing, FiLM, λ codes."""

import numpy as np
import pytest
import torch

from oat_edge.errors import ConfigError, ModeError
from oat_edge.lambda_code import S1, encode_lambdas, interp_weights, make_code_matrix
from oat_edge.layers import DualBatchNorm2d, SlimmableConv2d
from oat_edge.models import create_model, get_model_defaults, list_models


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("resnet_tiny", channels=(8, 16, 32), **kw)


def perturb_(module_list):
    """Give every BN in a list different affine parameters and running statistics."""
    with torch.no_grad():
        for bn in module_list:
            bn.weight.add_(torch.randn_like(bn.weight))
            bn.bias.add_(torch.randn_like(bn.bias))
            bn.running_mean.add_(torch.randn_like(bn.running_mean))
            bn.running_var.mul_(2.0)


def dual_bns(model):
    return [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]


@pytest.mark.parametrize("branch,lam_fixed,lam_moved", [("bn_a", 0.0, 0.3), ("bn_c", 0.3, 0.0)])
def test_eval_routing_isolates_branches(branch, lam_fixed, lam_moved):
    """A λ = 0 sample's output does not depend on BN_a (and a λ > 0 sample's not on BN_c)."""
    model = tiny().eval()
    x = torch.rand(4, 1, 8, 8)
    lams = [lam_fixed, lam_moved, lam_fixed, lam_moved]
    before = model(x, lams)
    for bn in dual_bns(model):
        perturb_(getattr(bn, branch))
    after = model(x, lams)
    fixed = [0, 2]
    moved = [1, 3]
    assert torch.allclose(before[fixed], after[fixed], atol=0, rtol=0)
    assert not torch.allclose(before[moved], after[moved], atol=1e-3)


def test_training_routing_uses_only_own_samples_for_batch_statistics():
    """In training, BN_c's batch statistics come from λ = 0 samples only: changing the λ > 0
    samples' images leaves the λ = 0 samples' outputs unchanged, and vice versa."""
    model = tiny().train()
    x = torch.rand(8, 1, 8, 8)
    lams = np.array([0, 0.2, 0, 1.0, 0, 0.4, 0, 0.1])
    clean = lams == 0
    out1 = model(x, lams)
    x2 = x.clone()
    x2[~torch.from_numpy(clean)] = torch.rand(int((~clean).sum()), 1, 8, 8)
    out2 = model(x2, lams)
    assert torch.allclose(out1[clean], out2[clean], atol=1e-6)
    assert not torch.allclose(out1[~clean], out2[~clean], atol=1e-3)


def test_training_routing_updates_only_the_routed_running_stats():
    model = tiny().train()
    bn = dual_bns(model)[0]
    a_before = bn.bn_a[-1].running_mean.clone()
    c_before = bn.bn_c[-1].running_mean.clone()
    model(torch.rand(6, 1, 8, 8), np.zeros(6))
    assert torch.equal(bn.bn_a[-1].running_mean, a_before)
    assert not torch.equal(bn.bn_c[-1].running_mean, c_before)


def test_normal_bn_ablation_shares_one_bn():
    model = tiny(dual_bn=False).eval()
    assert all(m.bn_a is None for m in dual_bns(model))
    x = torch.rand(2, 1, 8, 8)
    # λ = 0 and a tiny λ > 0 now differ only through FiLM, never through BN.
    assert torch.allclose(model(x, 0.0), model(x, 1e-9), atol=1e-5)


def test_width_slicing_uses_first_channels_only():
    conv = SlimmableConv2d(4, 8, 3, widths=(0.5, 1.0), padding=1)
    conv.width_idx = 0
    x = torch.rand(2, 2, 5, 5)
    out = conv(x)
    assert out.shape == (2, 4, 5, 5)
    ref = torch.nn.functional.conv2d(x, conv.weight[:4, :2], None, padding=1)
    assert torch.allclose(out, ref)
    with torch.no_grad():
        conv.weight[4:].normal_()
        conv.weight[:, 2:].normal_()
    assert torch.allclose(conv(x), ref)


def test_model_width_switch_ignores_weights_outside_the_slice():
    model = tiny().eval()
    model.set_width(0.5)
    x = torch.rand(3, 1, 8, 8)
    ref = model(x, 0.2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SlimmableConv2d) and m.slim_out:
                m.weight[m.out_active :].normal_()
    assert torch.allclose(model(x, 0.2), ref)
    model.set_width(1.0)
    assert not torch.allclose(model(x, 0.2), ref, atol=1e-3)


def test_widths_change_channel_counts():
    model = tiny()
    sizes = [model.film_size(w) for w in model.widths]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    # 0.75 · 16 = 12 exactly (no float truncation to 11)
    assert model.film_layout(0.75)[0][1] == 6 and model.film_layout(0.75)[3][1] == 12


def test_code_matrix_is_orthogonal_and_determined_by_seed():
    m = make_code_matrix(7, 128)
    assert np.allclose(m @ m.T, np.eye(128), atol=1e-5)
    assert np.array_equal(m, make_code_matrix(7, 128))
    assert not np.allclose(m, make_code_matrix(8, 128))
    # The model's buffer is that matrix (and is what checkpoints store).
    model = tiny(code_seed=7)
    assert np.array_equal(model.code_matrix.numpy(), m)


def test_codes_of_training_lambdas_are_rows_and_unseen_are_interpolated():
    rows = make_code_matrix(0, 128)[: len(S1)]
    codes = encode_lambdas(S1, S1, rows)
    assert np.allclose(codes, rows)
    mid = encode_lambdas([0.15], S1, rows)[0]
    assert np.allclose(mid, 0.5 * rows[1] + 0.5 * rows[2], atol=1e-6)
    between = encode_lambdas([0.7], S1, rows)[0]  # between 0.4 (row 4) and 1.0 (row 5)
    assert np.allclose(between, 0.5 * rows[4] + 0.5 * rows[5], atol=1e-6)
    # Continuity at a training point
    assert np.allclose(encode_lambdas([0.2 - 1e-9], S1, rows), rows[2], atol=1e-6)


def test_lambdas_below_the_training_set_take_the_end_code():
    lo, hi, t = interp_weights([0.0, 0.05, 0.95, 1.0], [0.1, 0.5, 0.9])
    assert lo.tolist() == [0, 0, 2, 2] and hi.tolist() == [0, 0, 2, 2] and t.tolist() == [0, 0, 0, 0]


def test_torch_and_numpy_codes_agree():
    model = tiny()
    lams = [0.0, 0.05, 0.1, 0.33, 0.9, 1.0]
    ref = encode_lambdas(lams, model.train_lambdas, model.code_rows().numpy())
    assert np.allclose(model.encode(lams).numpy(), ref, atol=1e-6)


def test_film_vector_path_equals_generator_path():
    model = tiny().eval()
    x = torch.rand(3, 1, 8, 8)
    for w in model.widths:
        model.set_width(w)
        for lam in (0.0, 0.15, 1.0):
            film = model.film_vectors([lam], w)[0]
            assert torch.allclose(model(x, lam), model(x, lam, film=film), atol=1e-5)


def test_film_initialisation_reference_and_identity():
    """The reference init (PyTorch default) gives γ scattered around 0, different per λ; the
    "identity" option centres γ on 1 and β on 0 and keeps the same λ-dependent spread."""
    ref = create_model("resnet_tiny")
    ident = create_model("resnet_tiny", film_init="identity")
    for model, gamma_mean in ((ref, 0.0), (ident, 1.0)):
        vec = model.film_vectors([0.0, 0.3, 1.0], 1.0)
        for off, c in model.film_layout(1.0):
            gamma, beta = vec[:, off : off + c], vec[:, off + c : off + 2 * c]
            assert abs(float(gamma.mean()) - gamma_mean) < 0.3
            assert abs(float(beta.mean())) < 0.3
            assert not torch.allclose(gamma[0], gamma[2], atol=1e-3)  # depends on λ from the start
    with pytest.raises(ConfigError, match="FiLM init"):
        create_model("resnet_tiny", film_init="zeros")


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), float("inf"), "x", None])
def test_bad_lambda_is_one_clear_error(lam):
    model = tiny()
    with pytest.raises(ModeError, match="λ"):
        model.set_mode(lam, 1.0)


def test_bad_per_sample_lambda_is_one_clear_error():
    model = tiny()
    with pytest.raises(ModeError):
        model(torch.rand(2, 1, 8, 8), [0.1, 2.0])
    with pytest.raises(ModeError, match="batch"):
        model(torch.rand(2, 1, 8, 8), [0.1, 0.2, 0.3])


def test_untrained_width_is_one_clear_error():
    model = tiny(widths=(0.5, 1.0))
    with pytest.raises(ModeError, match="trained widths: 0.5, 1"):
        model.set_width(0.75)


def test_unknown_architecture_and_kwargs_are_clear_errors():
    with pytest.raises(ConfigError, match="known: "):
        create_model("resnet999")
    with pytest.raises(ConfigError, match="does not take"):
        create_model("resnet_tiny", colour="blue")
    assert {"resnet34", "wrn16_8", "wrn40_2", "resnet_tiny"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_backbone_runs_every_width(name):
    model = create_model(name, widths=(0.5, 1.0)).eval()
    x = torch.rand(2, get_model_defaults(name)["in_chans"], 32, 32)
    for w in model.widths:
        model.set_width(w)
        assert model(x, [0.0, 0.4]).shape == (2, 10)


class _OpLog:
    """The aten operators dispatched inside the block, by name."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        log = self.ops = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                log.append(str(func.overloadpacket).split(".")[-1])
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def test_mixed_batch_dual_bn_gradient_is_a_gather_with_the_reference_values():
    """A mixed λ batch's dual BN backward moves each row's gradient back with a gather (no
    zero-fill and scatter-add per layer), and the gradient is exactly the one of routing by
    index_select / index_copy."""
    torch.manual_seed(0)
    bn = DualBatchNorm2d(6, (1.0,)).train()
    x = torch.randn(10, 6, 4, 4, requires_grad=True)
    w = torch.randn(10, 6, 4, 4)
    is_adv = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 1], dtype=bool)
    with _OpLog() as log:
        (bn(x, torch.from_numpy(is_adv)) * w).sum().backward()
    assert not {"index_add", "index_add_", "scatter_add", "scatter_add_", "index_put", "index_put_"} & set(log.ops)
    x_ref = x.detach().clone().requires_grad_(True)
    ia, ic = torch.from_numpy(np.flatnonzero(is_adv)), torch.from_numpy(np.flatnonzero(~is_adv))
    ref = DualBatchNorm2d(6, (1.0,)).train()
    out = torch.empty(10, 6, 4, 4)
    out = out.index_copy(0, ia, ref.bn_a[0](x_ref[ia])).index_copy(0, ic, ref.bn_c[0](x_ref[ic]))
    (out * w).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.equal(bn.bn_a[0].running_mean, ref.bn_a[0].running_mean)
    assert torch.equal(bn.bn_c[0].running_var, ref.bn_c[0].running_var)
    # the same through a model, whose route is decided on the host
    model = tiny().train()
    xm = torch.rand(6, 1, 8, 8, requires_grad=True)
    with _OpLog() as log:
        model(xm, [0.0, 0.3, 0.0, 1.0, 0.2, 0.0]).sum().backward()
    assert not {"index_add", "index_add_", "scatter_add", "scatter_add_"} & set(log.ops)


def test_frozen_film_sites_only_multiply_and_add_and_match_the_generators():
    """An attack's passes reuse γ/β computed once per attack: a site then dispatches one mul
    and one add, and the logits are exactly those of running the generators."""
    model = tiny().eval()
    x = torch.rand(5, 1, 8, 8)
    lams = np.array([0.1, 0.4, 1.0, 0.1, 0.2])
    cond = model.frozen_cond(lams, 5, "cpu")
    site = model.film_sites()[1]
    h = torch.randn(5, site.channels, 8, 8)
    with torch.no_grad(), _OpLog() as log:
        site(h, cond)
    assert log.ops == ["mul", "add"]
    with torch.no_grad():
        assert torch.equal(model.features(x, cond), model(x, lams))
        model.set_width(0.5)
        assert torch.equal(model.features(x, model.frozen_cond(lams, 5, "cpu")), model(x, lams))


def test_full_width_film_generator_uses_its_parameters_unsliced():
    """At full width a generator computes with its parameters themselves: no slice (whose
    backward zero-pads a gradient per weight); a smaller width uses the leading block."""
    site = tiny().film_sites()[0]
    gen = site.generator()
    assert all(a is b for a, b in zip(gen.weights(gen.channels), (gen.fc1.weight, gen.fc1.bias, gen.fc2.weight, gen.fc2.bias)))
    code = torch.randn(3, gen.fc1.in_features)
    with _OpLog() as log:
        gen(code)
    assert "slice" not in log.ops[:-2]  # only the γ / β split at the end
    c = site.channels_at(0)
    w1, _, w2, _ = gen.weights(c)
    assert w1.shape[0] == 2 * c and w2.shape == (2 * c, 2 * c) and w2.data_ptr() == gen.fc2.weight.data_ptr()
