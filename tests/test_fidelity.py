"""Fidelity to the reference implementation (docs/fidelity.md): model sizes, FiLM sites and
generators, the clean pass, the PGD step, and that the adversarial loss term sees exactly what
the attack produced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from oat_edge.layers.film import FILM_SLOPE
from oat_edge.models import create_model, list_models
from oat_edge.training.config import TrainConfig
from oat_edge.training.trainers import Trainer

# Parameter counts of the reference models (OAT at full width; OATS ResNet-34 at 0.5/0.75/1.0).
REFERENCE_PARAMS = {"resnet34": 33_355_466, "wrn16_8": 16_228_922, "wrn40_2": 3_886_394}
REFERENCE_FILM_SITES = {"resnet34": 33, "wrn16_8": 12, "wrn40_2": 36}
TINY = {"channels": [4, 8, 16]}


@pytest.mark.parametrize("arch", sorted(REFERENCE_PARAMS))
def test_oat_models_have_the_reference_parameter_count_and_film_sites(arch):
    model = create_model(arch, widths=(1.0,))
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[arch]
    assert len(model.film_sites()) == REFERENCE_FILM_SITES[arch]


def test_every_registered_model_has_film_sites_and_defaults_to_the_reference_film():
    for arch in list_models():
        model = create_model(arch)
        sites = model.film_sites()
        assert sites, arch
        assert all(s.shared and s.slope == FILM_SLOPE == 0.01 and len(s.generators) == 1 for s in sites), arch


def test_oats_resnet34_shares_one_generator_per_site_like_the_reference():
    assert sum(p.numel() for p in create_model("resnet34").parameters()) == 33_398_026
    legacy = create_model("resnet34", film_shared=False)  # one generator per width (oat-edge 0.1)
    assert sum(p.numel() for p in legacy.parameters()) == 44_060_106


def test_a_slimmed_film_site_uses_the_leading_block_of_the_shared_generator():
    model = create_model("resnet_tiny", in_chans=1, **TINY).eval()
    site = model.stem_norm.film
    gen = site.generators[0]
    code = model.encode([0.3])
    for i, w in enumerate(model.widths):
        c = site.channels_at(i)
        h = F.leaky_relu(code @ gen.fc1.weight[: 2 * c].T + gen.fc1.bias[: 2 * c], 0.01)
        out = F.leaky_relu(h @ gen.fc2.weight[: 2 * c, : 2 * c].T + gen.fc2.bias[: 2 * c], 0.01)
        gamma, beta = site.params(code, i)
        torch.testing.assert_close(gamma, out[:, :c])
        torch.testing.assert_close(beta, out[:, c:])
    # Training one width moves the generator every width uses.
    assert site.generator(0) is site.generator(len(model.widths) - 1)


def _trainer(tmp_path, **kw):
    cfg = dict(dataset="digits", method="oat", arch_kwargs=dict(TINY), epochs=1, batch_size=32,
               max_train_images=64, progress=False, out=str(tmp_path / "c.pt"))
    cfg.update(kw)
    return Trainer(TrainConfig(**cfg))


class _Passes:
    """Records the inputs of every forward pass of the model during one training step."""

    def __init__(self, model):
        self.inputs = []
        self.handle = model.register_forward_pre_hook(lambda m, args: self.inputs.append((args[0].detach().clone(), args[1])))


@pytest.mark.parametrize("clean_pass", ["all", "weighted"])
def test_the_adversarial_loss_sees_exactly_the_attacks_output_and_the_clean_pass_sees_everyone(tmp_path, clean_pass):
    trainer = _trainer(tmp_path, clean_pass=clean_pass)
    x, y = next(iter(trainer.batches(0)))
    lam = trainer.step_lambdas(0, 0)
    assert (lam == 1).any() and (lam == 0).any(), "seed must give a mixed batch"
    produced = []
    real_attack = trainer.attack

    def attack(model, xs, ys, ls, generator=None):
        out = real_attack(model, xs, ys, ls, generator=generator)
        produced.append(out.clone())
        return out

    trainer.attack = attack
    passes = _Passes(trainer.model)
    trainer.step.run(x, y, lam)
    passes.handle.remove()
    # Training passes are the model calls outside the attack (the attack runs in eval mode, the
    # step's passes in train mode): the last two calls are the clean and the adversarial pass.
    clean_in, clean_lam = passes.inputs[-2]
    adv_in, adv_lam = passes.inputs[-1]
    assert len(produced) == 1
    assert torch.equal(adv_in, produced[0])  # not the clean images, not a re-attack
    assert torch.equal(torch.as_tensor(adv_lam), lam[lam > 0])
    expected_clean = x if clean_pass == "all" else x[lam < 1]
    assert torch.equal(clean_in, expected_clean)  # the reference: λ = 1 samples in the clean pass too


def test_pgd_step_defaults_to_the_reference_code():
    from oat_edge.training.datasets import dataset_info

    for ds in ("cifar10", "svhn", "stl10"):
        assert dataset_info(ds)["step_size"] == pytest.approx(min(1.25 * 8 / 255, 8 / 255 + 4 / 255) / 7)
        cfg = TrainConfig(dataset=ds, step_size="paper").resolved()
        assert cfg.step_size == pytest.approx(2 / 255)
    assert TrainConfig(dataset="cifar10").resolved().step_size == pytest.approx(10 / 255 / 7)
