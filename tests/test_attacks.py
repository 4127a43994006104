"""Attacks: ε-ball and [0, 1] bounds, real damage to a trained model, no side effects on the
model (train/eval flags, BN statistics, parameter gradients, width), per-sample λ, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oat_edge.errors import ConfigError, InputError
from oat_edge.training.attacks import make_attack
from oat_edge.training.datasets import dataset_info, load_dataset
from training_support import train_clean_tiny

ATTACKS = ("pgd7", "pgd3", "fgsm", "mifgsm", "apgd-ce", "apgd-dlr", "apgd-t")


@pytest.fixture(scope="module")
def model():
    return train_clean_tiny()


@pytest.fixture(scope="module")
def batch():
    test = load_dataset("digits", "test")
    return test.images[:128].clone(), test.labels[:128].clone()


def _acc(model, x, y, lam):
    with torch.no_grad():
        return float((model(x, lam).argmax(1) == y).float().mean())


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("eps", [8 / 255, 0.2])
def test_attacks_stay_in_the_eps_ball_and_the_image_range(model, batch, name, eps):
    x, y = batch
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # the clipping is exercised
    attack = make_attack(name, eps=eps, dataset="digits")
    x_adv = attack(model, x, y, 1.0, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) > 0.5 * eps  # it did move


def test_attacks_hurt_far_more_than_random_noise_of_the_same_size(model, batch):
    x, y = batch
    eps = dataset_info("digits")["eps"]
    clean = _acc(model, x, y, 0.0)
    assert clean > 0.9
    gen = torch.Generator().manual_seed(0)
    noise = (x + eps * torch.sign(torch.rand(x.shape, generator=gen) - 0.5)).clamp(0, 1)
    noisy = _acc(model, noise, y, 0.0)
    assert noisy > 0.4  # ±ε sign noise at the digits ε (0.3) costs a standard model about half
    for name in ATTACKS:
        robust = _acc(model, make_attack(name, dataset="digits")(model, x, y, 0.0, generator=gen), y, 0.0)
        assert robust < noisy - 0.3, (name, robust, noisy)
    # More PGD steps never help the model much (same start noise).
    pgd7 = make_attack("pgd7", dataset="digits")(model, x, y, 0.0, generator=torch.Generator().manual_seed(1))
    pgd1 = make_attack("pgd1", dataset="digits")(model, x, y, 0.0, generator=torch.Generator().manual_seed(1))
    assert _acc(model, pgd7, y, 0.0) <= _acc(model, pgd1, y, 0.0)


@pytest.mark.parametrize("train_mode", [True, False])
def test_attack_leaves_model_state_bn_stats_and_grads_untouched(model, batch, train_mode):
    x, y = batch
    model.train(train_mode)
    try:
        flags = {n: m.training for n, m in model.named_modules()}
        buffers = {k: v.clone() for k, v in model.state_dict().items()}
        params = list(model.parameters())
        for i, p in enumerate(params):  # a half-accumulated gradient must survive the attack
            p.grad = None if i % 2 else torch.full_like(p, 0.25)
        model.set_width(0.5)
        make_attack("pgd3", dataset="digits")(model, x[:32], y[:32], torch.rand(32))
        assert {n: m.training for n, m in model.named_modules()} == flags
        for k, v in model.state_dict().items():
            assert torch.equal(v, buffers[k]), k  # BN running stats, num_batches_tracked, weights
        for i, p in enumerate(params):
            assert (p.grad is None) if i % 2 else torch.equal(p.grad, torch.full_like(p, 0.25))
        assert model.width == 0.5
    finally:
        for p in model.parameters():
            p.grad = None
        model.set_width(1.0)
        model.eval()


def test_attack_runs_at_the_models_width_and_the_given_lambda(model, batch):
    x, y = batch
    fgsm = make_attack("fgsm", dataset="digits")  # deterministic: no random start
    full = fgsm(model, x, y, 0.3)
    model.set_width(0.5)
    try:
        half = fgsm(model, x, y, 0.3)
    finally:
        model.set_width(1.0)
    assert not torch.equal(full, half)
    assert not torch.equal(full, fgsm(model, x, y, 0.0))  # λ = 0 uses BN_c and another code
    # Reproduce FGSM at (λ = 0.3, width 1) by hand.
    x_req = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_req, 0.3), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_req)
    eps = dataset_info("digits")["eps"]
    torch.testing.assert_close(full, (x + eps * grad.sign()).clamp(0, 1), rtol=0, atol=1e-6)


def test_per_sample_lambda_attacks_each_sample_at_its_own_lambda(model, batch):
    x, y = batch
    x, y = x[:40], y[:40]
    lams = np.array([0.0, 1.0, 0.2, 0.0] * 10)
    attack = make_attack("mifgsm", dataset="digits")  # deterministic
    mixed = attack(model, x, y, lams)
    for value in (0.0, 1.0, 0.2):
        rows = np.flatnonzero(lams == value)
        alone = attack(model, x[rows], y[rows], value)
        torch.testing.assert_close(mixed[rows], alone, rtol=0, atol=1e-5)
    # A tensor of one value equals the float.
    torch.testing.assert_close(attack(model, x, y, torch.full((40,), 0.2)), attack(model, x, y, 0.2), rtol=0, atol=1e-6)


def test_random_start_is_seeded(model, batch):
    x, y = batch
    pgd = make_attack("pgd2", dataset="digits")
    a = pgd(model, x, y, 1.0, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, 1.0, generator=torch.Generator().manual_seed(3))
    c = pgd(model, x, y, 1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_attack_works_inside_no_grad(model, batch):
    x, y = batch
    with torch.no_grad():
        x_adv = make_attack("fgsm", dataset="digits")(model, x, y, 0.0)
    assert float((x_adv - x).abs().max()) > 0


def test_make_attack_names_and_defaults():
    pgd7 = make_attack("pgd7")
    # Without a dataset: the paper's ε and the reference code's step min(1.25ε, ε + 4/255)/7.
    assert pgd7.describe() == {"name": "pgd7", "eps": pytest.approx(8 / 255), "steps": 7, "loss": "ce",
                               "step_size": pytest.approx(10 / 255 / 7), "random_start": True}
    apgd = make_attack("apgd-dlr", dataset="digits", restarts=3)
    assert (apgd.steps, apgd.restarts, apgd.loss, apgd.eps) == (100, 3, "dlr", dataset_info("digits")["eps"])
    assert make_attack("apgd-t", steps=20).describe()["targets"] == 3
    assert make_attack("PGD20", dataset="cifar10").steps == 20
    digits = make_attack("pgd7", dataset="digits")
    assert (digits.eps, digits.step_size) == (dataset_info("digits")["eps"], dataset_info("digits")["step_size"])
    custom = make_attack("pgd10", eps=0.1, dataset="cifar10")
    ratio = dataset_info("cifar10")["step_size"] / dataset_info("cifar10")["eps"]
    assert custom.step_size == pytest.approx(0.1 * ratio) and custom.steps == 10  # keeps the step/ε ratio
    fgsm = make_attack("fgsm", dataset="svhn")
    assert fgsm.steps == 1 and fgsm.step_size == fgsm.eps and not fgsm.random_start
    mi = make_attack("mifgsm", eps=0.1)
    assert mi.steps == 10 and mi.step_size == pytest.approx(0.01) and mi.describe()["momentum"] == 1.0
    ds = load_dataset("digits", "test")
    assert make_attack("fgsm", dataset=ds).eps == dataset_info("digits")["eps"]


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "cw"}, "unknown attack 'cw'"),
    ({"name": "pgd0"}, "steps must be"),
    ({"name": "pgd7", "eps": -0.1}, "eps must be"),
    ({"name": "pgd7", "eps": float("nan")}, "eps must be"),
    ({"name": "pgd7", "eps": 8.0}, "must be ≤ 1"),
    ({"name": "pgd7", "dataset": "mnist"}, "unknown dataset"),
    ({"name": "apgd-ce", "restarts": 0}, "restarts must be"),
    ({"name": "apgd-ce", "steps": 0}, "steps must be"),
])
def test_make_attack_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_attack(**kwargs)


def test_attack_rejects_images_outside_the_unit_range(model, batch):
    x, y = batch
    attack = make_attack("fgsm")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        attack(model, x * 255, y, 0.0)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="finite"):
        attack(model, bad, y, 0.0)
    with pytest.raises(InputError, match="labels"):
        attack(model, x, y[:3], 0.0)


@pytest.mark.parametrize("name,kwargs", [("apgd-ce", {"steps": 10, "restarts": 2}), ("apgd-t", {"steps": 10}),
                                         ("square", {"steps": 30})])
def test_per_sample_lambda_follows_the_images_an_attack_works_on(model, batch, name, kwargs):
    # APGD restarts on, and Square queries, only the images still standing: their λ must be
    # taken with them (OAT attacks each sample at its own λ). This failed on the GPU machine:
    # "got 128 λ values for a batch of 113".
    x, y = batch
    attack = make_attack(name, dataset="digits", **kwargs)
    mixed = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1))
    for lam in (mixed, mixed.numpy(), mixed.tolist()):
        x_adv = attack(model, x, y, lam, generator=torch.Generator().manual_seed(0))
        assert float((x_adv - x).abs().max()) <= attack.eps + 1e-6
    # One λ for all, given per sample, is the same attack as the scalar.
    same = attack(model, x, y, torch.full((x.shape[0],), 0.3), generator=torch.Generator().manual_seed(0))
    scalar = attack(model, x, y, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, scalar)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attacks_on_cuda_with_cpu_or_no_generator(model, batch):
    x, y = batch[0].cuda(), batch[1].cuda()
    gpu_model = train_clean_tiny(epochs=1).cuda()
    for gen in (None, torch.Generator().manual_seed(0)):
        for name in ATTACKS:
            attack = make_attack(name, dataset="digits")
            x_adv = attack(gpu_model, x, y, torch.rand(x.shape[0], device="cuda"), generator=gen)
            assert x_adv.device == x.device
            assert float((x_adv - x).abs().max()) <= attack.eps + 1e-6
            assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0


# --- APGD --------------------------------------------------------------------------------------


def test_apgd_step_size_checkpoints_follow_the_paper():
    from oat_edge.training.attacks import step_checkpoints

    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2)
    assert step_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert step_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


def test_dlr_loss_ignores_the_scale_and_shift_of_the_logits():
    """What makes DLR robust to masking by logit scaling: DLR(a·z + b) = DLR(z)."""
    from oat_edge.training.attacks.apgd import _per_sample_loss

    z = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    t = (y + 1) % 10
    for kind in ("dlr", "dlr-t"):
        base = _per_sample_loss(kind, z, y, t)
        torch.testing.assert_close(_per_sample_loss(kind, 50.0 * z + 3.0, y, t), base, rtol=1e-4, atol=1e-5)
    ce = _per_sample_loss("ce", z, y)
    assert not torch.allclose(_per_sample_loss("ce", 50.0 * z, y), ce)
    # DLR is negative (the true class leads) exactly where the model is right.
    right = z.argmax(1) == y
    assert torch.equal(_per_sample_loss("dlr", z, y) < 0, right)


@pytest.fixture(scope="module")
def robust_model():
    from training_support import train_adversarial_tiny

    return train_adversarial_tiny()


def test_apgd_images_it_counts_as_broken_are_misclassified(robust_model, batch):
    """The attack returns, for every image it broke, an image inside the ε-ball that the model
    misclassifies (not merely a high-loss point)."""
    x, y = batch
    for name in ("apgd-ce", "apgd-dlr", "apgd-t"):
        attack = make_attack(name, eps=0.15, steps=25)
        x_adv = attack(robust_model, x, y, 1.0, generator=torch.Generator().manual_seed(0))
        assert float((x_adv - x).abs().max()) <= 0.15 + 1e-6
        assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
        clean = _acc(robust_model, x, y, 1.0)
        robust = _acc(robust_model, x_adv, y, 1.0)
        assert robust < clean, name


def test_apgd_ensemble_is_at_least_as_strong_as_pgd100(robust_model):
    """The acceptance of the strong evaluation: on an adversarially trained digits model the
    per-image worst case over APGD-CE and APGD-DLR alone leaves no more images standing than
    PGD-100, run separately (so neither PGD is part of the worst case it is compared with)."""
    from oat_edge.training.evaluate import WORST_CASE, evaluate_model

    test = load_dataset("digits", "test")
    eps = 0.15

    def run(names):
        attacks = [make_attack(n, eps=eps, dataset="digits") for n in names]
        return evaluate_model(robust_model, test, lambdas=[1.0], widths=[1.0], attacks=attacks, progress=False)[0]

    apgd, pgd = run(("apgd-ce", "apgd-dlr")), run(("pgd7", "pgd100"))
    assert apgd["sa"] == pgd["sa"]
    assert 0.2 < pgd["ra"]["pgd100"] < pgd["sa"], pgd["ra"]  # a model with real (non-trivial) robustness
    assert apgd["ra"][WORST_CASE] <= pgd["ra"]["pgd100"], (apgd["ra"], pgd["ra"])
    # More PGD steps do not leave more images standing (two independent attacks, one image of slack).
    assert pgd["ra"]["pgd100"] <= pgd["ra"]["pgd7"] + 1 / 360, pgd["ra"]
