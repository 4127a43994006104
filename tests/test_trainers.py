"""The trainers: what one OAT/OATS/PGD-AT(S) step does, and what a run writes.

Tiny models (resnet_tiny, channels 8/16/32) on digits subsets keep each test to seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

from oat_edge.checkpoint import build_model, load_checkpoint
from oat_edge.errors import ConfigError
from oat_edge.training.config import TrainConfig
from oat_edge.training.step import derive_seed, sample_lambdas
from oat_edge.training.trainers import Trainer, train

TINY = {"channels": [8, 16, 32]}


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(dataset="digits", method="oats", arch_kwargs=dict(TINY), epochs=1, batch_size=32,
                max_train_images=128, progress=False, out=str(tmp_path / "ckpt.pt"))
    base.update(kw)
    return TrainConfig(**base)


def set_bn_momentum(model, momentum):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum


class RecordingAttack:
    """Wraps the real attack and records what it was asked to attack."""

    def __init__(self, attack):
        self.attack, self.calls = attack, []

    def describe(self):
        return self.attack.describe()

    def __call__(self, model, x, y, lam, generator=None):
        self.calls.append((model.width, torch.as_tensor(lam).clone(), x.shape[0]))
        return self.attack(model, x, y, lam, generator=generator)


def test_oat_routes_each_sample_to_its_bn_and_attacks_only_lambda_positive(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="oat"))
    model = trainer.model
    set_bn_momentum(model, 1.0)  # running stats = statistics of the last batch a BN saw
    spy = RecordingAttack(trainer.attack)
    trainer.attack = spy
    x, y = next(iter(trainer.batches(0)))
    lam = trainer.step_lambdas(0, 0)
    assert (lam == 0).any() and (lam > 0).any() and (lam == 1).any(), "seed must give a mixed batch"
    with torch.no_grad():
        stem = model.stem_conv(model.normalize(x))
    bn_c = model.stem_norm.bn.bn_c[-1]
    bn_a = model.stem_norm.bn.bn_a[-1]
    trainer.train_step(0, 0, x, y)

    # BN_c saw exactly the clean λ = 0 samples ...
    expected_c = stem[lam == 0].mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn_c.running_mean, expected_c, rtol=1e-4, atol=1e-5)
    # ... which differs from the whole batch (so the check can fail), and BN_a's last update
    # came from the adversarial pass over the λ > 0 samples, not from the λ = 0 ones.
    assert not torch.allclose(bn_c.running_mean, stem.mean(dim=(0, 2, 3)), atol=1e-3)
    assert not torch.allclose(bn_a.running_mean, expected_c, atol=1e-3)
    # One attack call per width, on the λ > 0 samples only, each at its own λ.
    assert len(spy.calls) == 1
    width, attacked_lams, n = spy.calls[0]
    assert width == 1.0 and n == int((lam > 0).sum())
    assert torch.equal(attacked_lams, lam[lam > 0])


def test_oats_step_visits_every_width_then_steps_once(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="oats", widths=[0.5, 0.75, 1.0]))
    spy = RecordingAttack(trainer.attack)
    trainer.attack = spy
    model = trainer.model
    film_before = model.stem_norm.film.generators[0].fc1.weight.clone()  # one generator, shared by the widths
    bn_before = {w: model.stem_norm.bn.bn_a[i].running_mean.clone() for i, w in enumerate(model.widths)}
    stats = trainer.train_step(0, 0)
    assert [c[0] for c in spy.calls] == [1.0, 0.75, 0.5]  # largest first, every width
    assert trainer.scheduler.last_epoch == 1  # one optimizer/scheduler step for the batch
    for i, w in enumerate(model.widths):
        # every width's own BN_a took part in this step
        assert not torch.equal(model.stem_norm.bn.bn_a[i].running_mean, bn_before[w]), w
    # the shared FiLM generator moved, including the rows only the full width uses
    after = model.stem_norm.film.generators[0].fc1.weight
    assert not torch.equal(after[: 2 * model.stem_norm.film.channels_at(0)], film_before[: 2 * model.stem_norm.film.channels_at(0)])
    assert not torch.equal(after[2 * model.stem_norm.film.channels_at(1) :], film_before[2 * model.stem_norm.film.channels_at(1) :])
    assert math.isfinite(stats.loss) and stats.loss > 0
    assert model.width == 1.0


def test_oats_gradients_are_the_sum_over_widths(tmp_path):
    """With ε = 0 the attack returns x, so the step's gradient can be recomputed by hand:
    the sum over widths of the per-width losses (one backward each)."""
    trainer = Trainer(tiny_config(tmp_path, method="oats", eps=0.0, step_size=0.0, lr=1.0, momentum=0.0,
                                  weight_decay=0.0, film_lr_mult=1.0))
    model = trainer.model
    x, y = next(iter(trainer.batches(0)))
    lam = trainer.step_lambdas(0, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train_step(0, 0, x, y)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr0 = trainer.scheduler.base_lrs[0]  # the lr of step 0 (cosine factor 1 at iteration 0)

    model.load_state_dict(before)
    model.train()
    total = 0.0
    for w in (1.0, 0.75, 0.5):
        model.set_width(w)
        c, a = lam < 1, lam > 0
        ce_c = torch.nn.functional.cross_entropy(model(x[c], lam[c]), y[c], reduction="none")
        ce_a = torch.nn.functional.cross_entropy(model(x[a], lam[a]), y[a], reduction="none")
        total = total + (((1 - lam[c]) * ce_c).sum() + (lam[a] * ce_a).sum()) / x.shape[0]
    grads = torch.autograd.grad(total, [p for _, p in model.named_parameters()], allow_unused=True)
    for (name, p), g in zip(model.named_parameters(), grads):
        expected = p.detach() - lr0 * g if g is not None else p.detach()
        torch.testing.assert_close(after[name], expected, rtol=1e-4, atol=1e-6, msg=name)


def test_pgd_at_baseline_is_unconditioned_single_bn_at_fixed_lambda(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="pgd-at"))
    spy = RecordingAttack(trainer.attack)
    trainer.attack = spy
    model = trainer.model
    assert model.widths == (1.0,) and not model.use_film and not model.dual_bn
    assert not model.film_sites()
    trainer.train_step(0, 0)
    assert len(spy.calls) == 1 and bool((spy.calls[0][1] == 1.0).all())
    assert spy.calls[0][2] == trainer.per_rank_batch  # every sample attacked at λ = 1
    path = trainer.save(1)
    ck = load_checkpoint(path)
    assert ck["method"] == "pgd-at" and ck["train_lambdas"] == [1.0]
    assert ck["arch_kwargs"]["film"] is False and ck["arch_kwargs"]["dual_bn"] is False


def test_pgd_ats_trains_every_width_without_film(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="pgd-ats", lambdas=[0.5]))
    spy = RecordingAttack(trainer.attack)
    trainer.attack = spy
    assert trainer.model.widths == (0.5, 0.75, 1.0) and not trainer.model.use_film
    trainer.train_step(0, 0)
    assert [c[0] for c in spy.calls] == [1.0, 0.75, 0.5]
    assert all(bool((c[1] == 0.5).all()) for c in spy.calls)


def test_normal_bn_and_no_film_ablations_of_oat(tmp_path):
    """The paper's ablations: OAT with one BN (no dual BN) or without FiLM."""
    trainer = Trainer(tiny_config(tmp_path, method="oat", arch_kwargs={**TINY, "dual_bn": False}))
    assert not trainer.model.dual_bn and trainer.model.use_film
    trainer.train_step(0, 0)
    assert trainer.payload(1)["arch_kwargs"]["dual_bn"] is False
    trainer = Trainer(tiny_config(tmp_path, method="oats", arch_kwargs={**TINY, "film": False}))
    assert trainer.model.dual_bn and not trainer.model.film_sites()


def test_checkpoint_rebuilds_the_model_and_records_the_run(tmp_path):
    cfg = tiny_config(tmp_path, method="oats", widths=[0.5, 1.0], lambdas=[0, 0.5, 1], seed=3, eval_every=1,
                      eval_max_images=40)
    path = train(cfg)
    raw = torch.load(path, weights_only=True)  # plain data only: safe to load from anywhere
    ck = load_checkpoint(path)
    assert raw.keys() == ck.keys()
    assert ck["method"] == "oats" and ck["epoch"] == 1 and ck["arch"] == "resnet_tiny"
    kw = ck["arch_kwargs"]
    assert kw["widths"] == [0.5, 1.0] and kw["train_lambdas"] == [0.0, 0.5, 1.0]
    assert kw["channels"] == [8, 16, 32] and kw["code_seed"] == 3 and kw["film"] and kw["dual_bn"]
    assert not any(isinstance(v, tuple) for v in kw.values())
    assert ck["dataset"]["name"] == "digits" and ck["dataset"]["input_shape"] == [1, 8, 8]
    assert ck["dataset"]["num_classes"] == 10 and len(ck["dataset"]["mean"]) == 1 and "split" in ck["dataset"]
    assert ck["config"]["lr"] > 0 and ck["config"]["epochs"] == 1
    assert {"optimizer", "scheduler", "rng", "metrics"} <= set(ck)
    assert ck["metrics"]["history"][0]["epoch"] == 1
    # --eval-every: SA/RA at the extreme λ of the set and every width, kept in the checkpoint
    last = ck["metrics"]["last_eval"]
    assert sorted((r["lam"], r["width"]) for r in last) == [(0.0, 0.5), (0.0, 1.0), (1.0, 0.5), (1.0, 1.0)]
    assert all(0 <= r["sa"] <= 1 and set(r["ra"]) == {"pgd10", "worst_case"} for r in last)  # digits trains with PGD-10
    model = build_model(ck)
    trainer_model_state = ck["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, trainer_model_state[k]), k
    # the λ-code matrix is stored and is what the rebuilt model uses
    assert torch.equal(model.code_matrix, ck["model"]["code_matrix"])


def test_cosine_schedule_is_per_iteration_and_ends_near_zero(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="oat", epochs=2, lr=0.2, eps=0.0, step_size=0.0))
    steps = trainer.steps_per_epoch * 2
    lrs = []
    for it in range(steps):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()  # no gradients: a no-op, keeps the step order torch expects
        trainer.scheduler.step()
    assert lrs[0] == pytest.approx(0.2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # decreases every iteration, not per epoch
    assert lrs[steps // 2] == pytest.approx(0.1, rel=0.05)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = load_checkpoint(train(tiny_config(tmp_path, method="oat", out=str(tmp_path / "a.pt"))))
    b = load_checkpoint(train(tiny_config(tmp_path, method="oat", out=str(tmp_path / "b.pt"))))
    c = load_checkpoint(train(tiny_config(tmp_path, method="oat", seed=1, out=str(tmp_path / "c.pt"))))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not torch.equal(a["model"]["classifier.weight"], c["model"]["classifier.weight"])


def test_training_leaves_the_callers_rng_alone(tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train(tiny_config(tmp_path, method="pgd-at", max_train_images=64))
    assert torch.equal(torch.rand(3), expected)


def test_lambda_draws_cover_the_set_and_shard_like_the_data(tmp_path):
    gen = torch.Generator().manual_seed(0)
    draws = sample_lambdas([0.0, 0.1, 0.2, 0.3, 0.4, 1.0], 6000, gen)
    values, counts = torch.unique(draws, return_counts=True)
    assert torch.allclose(values, torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 1.0]))
    assert counts.min() > 850 and counts.max() < 1150  # uniform: 1000 each
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    # A rank's λ are the global batch's, sliced as epoch_batches shards the samples.
    trainer = Trainer(tiny_config(tmp_path, method="oats"))
    full = trainer.step_lambdas(0, 3)
    trainer.ctx.world_size, trainer.ctx.rank, trainer.per_rank_batch = 2, 1, 16
    assert torch.equal(trainer.step_lambdas(0, 3), full[1::2])


def test_film_generators_learn_at_the_configured_rate(tmp_path):
    from oat_edge.layers import FiLM

    trainer = Trainer(tiny_config(tmp_path, method="oats", lr=0.05, film_lr_mult=10.0))
    film = {id(p) for m in trainer.model.modules() if isinstance(m, FiLM) for p in m.parameters()}
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(0.05), pytest.approx(0.5)]
    assert {id(p) for p in groups[1]["params"]} == film and not film & {id(p) for p in groups[0]["params"]}
    one = Trainer(tiny_config(tmp_path, method="oats", lr=0.05, film_lr_mult=1.0))
    assert len(one.optimizer.param_groups) == 1


def test_training_lowers_the_loss(tmp_path):
    path = train(tiny_config(tmp_path, method="oat", epochs=3, max_train_images=384, lr=0.05, eps=0.1, step_size=0.025))
    history = load_checkpoint(path)["metrics"]["history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.2
    assert history[-1]["clean_acc"] > 0.3  # 10 classes: chance is 0.1


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(method="pgd-at", widths=[0.5, 1.0]), "one full-width"),
        (dict(method="oat", widths=[0.5, 1.0]), "one full-width"),
        (dict(method="pgd-ats", lambdas=[0.5, 1.0]), "one fixed λ"),
        (dict(lambdas=[0.0, -0.1]), "[0, 1]"),
        (dict(lambdas=[float("nan")]), "[0, 1]"),
        (dict(widths=[0.0, 1.0]), "(0, 1]"),
        (dict(widths=[1.5]), "(0, 1]"),
        (dict(method="trades"), "unknown training method"),
        (dict(dataset="mnist"), "unknown dataset"),
        (dict(arch="resnet9000"), "unknown architecture"),
        (dict(batch_size=0), "batch_size"),
        (dict(arch_kwargs={"widths": [1.0]}), "--widths"),
        (dict(method="pgd-at", arch_kwargs={"dual_bn": True}), "set by the method (pgd-at)"),
        (dict(amp="bf16", device="cpu"), "CUDA"),
        (dict(max_train_images=8, batch_size=32), "no full batch"),
    ],
)
def test_bad_configs_raise_one_clear_error(tmp_path, kw, needle):
    with pytest.raises(ConfigError) as info:
        Trainer(tiny_config(tmp_path, **kw))
    assert needle in str(info.value)
    assert not (tmp_path / "ckpt.pt").exists()


def test_attacks_on_cached_film_train_the_same_weights(tmp_path, monkeypatch):
    # The training attack reads FiLM γ/β computed once per step (FiLMCached) instead of running
    # the generators at each of its steps: faster, and not one bit different.
    from oat_edge.models.base import FiLMCached

    a = load_checkpoint(train(tiny_config(tmp_path, method="oats", out=str(tmp_path / "a.pt"))))
    monkeypatch.setattr(FiLMCached, "wrap", staticmethod(lambda model: model))
    b = load_checkpoint(train(tiny_config(tmp_path, method="oats", out=str(tmp_path / "b.pt"))))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_eps_warmup_grows_the_training_attack_by_epoch(tmp_path):
    """With eps_warmup W the attack of epoch e (0-based) perturbs by at most ε·(e+1)/W, and by ε
    from epoch W on; without it, by ε from the start."""
    seen = []

    def record(trainer):
        perturb = trainer.attack.perturb

        def spy(forward, x, *args, **kwargs):
            x_adv = perturb(forward, x, *args, **kwargs)
            seen.append(float((x_adv - x).abs().max()))
            return x_adv

        trainer.attack.perturb = spy

    eps = 0.2
    trainer = Trainer(tiny_config(tmp_path, method="pgd-at", lambdas=[1.0], eps=eps, eps_warmup=4))
    record(trainer)
    for epoch, share in ((0, 0.25), (1, 0.5), (3, 1.0), (6, 1.0)):
        seen.clear()
        trainer.train_step(epoch, 0)
        # PGD reaches the ball's surface on some pixel of a 32-image batch.
        assert seen and max(seen) == pytest.approx(eps * share, abs=1e-6), (epoch, seen)
    plain = Trainer(tiny_config(tmp_path, method="pgd-at", lambdas=[1.0], eps=eps, out=str(tmp_path / "b.pt")))
    record(plain)
    seen.clear()
    plain.train_step(0, 0)
    assert max(seen) == pytest.approx(eps, abs=1e-6)
    with pytest.raises(ConfigError, match="eps_warmup"):
        Trainer(tiny_config(tmp_path, eps_warmup=-1))
