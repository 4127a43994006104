"""Evaluation: records per (λ, width), SA/RA against hand computations, JSON and PNG outputs,
``oat-edge eval`` end to end, and one clear error per bad input."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from oat_edge.checkpoint import save_checkpoint
from oat_edge.errors import CheckpointError, ConfigError, ModeError
from oat_edge.lambda_code import S1
from oat_edge.training.attacks import make_attack
from oat_edge.training.datasets import dataset_info, load_dataset
from oat_edge.training.eval_cli import add_eval_arguments, run_eval
from training_support import TINY_ARCH_KWARGS, train_clean_tiny

from oat_edge.training.attacks import DEFAULT_ENSEMBLE
from oat_edge.cliargs import json_out
from oat_edge.training.evaluate import WORST_CASE, eval_header, eval_json_doc, evaluate_model, plot_tradeoff

ARCH_KWARGS = TINY_ARCH_KWARGS
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model():
    return train_clean_tiny()


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    info = dataset_info("digits")
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    save_checkpoint(path, {
        "arch": "resnet_tiny",
        "arch_kwargs": dict(ARCH_KWARGS, mean=info["mean"], std=info["std"]),
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "method": "oats",
        "dataset": {k: info[k] for k in ("name", "num_classes", "input_shape", "mean", "std")},
        "config": {"note": "trained by tests/test_evaluate.py"},
        "epoch": 4,
    })
    return path


class _Masked(torch.nn.Module):
    """Rounds the input to the digits grey levels: the gradient through the rounding is 0."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.widths, self.train_lambdas = inner, inner.widths, inner.train_lambdas

    width = property(lambda self: self.inner.width)
    lam = property(lambda self: self.inner.lam)

    def set_width(self, w):
        self.inner.set_width(w)
        return self

    def set_mode(self, lam, w):
        self.inner.set_mode(lam, w)
        return self

    def forward(self, x, lam=None):
        return self.inner(torch.round(x * 16) / 16, lam)


def _manual_accuracy(model, x, y, lam, width):
    model.set_width(width)
    try:
        with torch.no_grad():
            return int((model(x, lam).argmax(1) == y).sum()) / len(y)
    finally:
        model.set_width(1.0)


def test_records_have_one_entry_per_mode_and_match_hand_computed_accuracy(model, test_set):
    x, y = test_set.images[:100], test_set.labels[:100]
    model.set_mode(0.4, 1.0)
    records = evaluate_model(model, test_set, lambdas=[0.0, 0.2, 1.0], widths=[0.5, 1.0],
                             attacks=("fgsm", "pgd3"), batch_size=32, max_images=100, progress=False)
    assert [(r["lam"], r["width"]) for r in records] == [(0.0, 0.5), (0.2, 0.5), (1.0, 0.5), (0.0, 1.0), (0.2, 1.0), (1.0, 1.0)]
    for r in records:
        assert set(r) == {"lam", "width", "n", "sa", "ra", "se"} and set(r["ra"]) == {"fgsm", "pgd3", WORST_CASE}
        assert r["n"] == 100 and r["se"] == pytest.approx(np.sqrt(r["ra"][WORST_CASE] * (1 - r["ra"][WORST_CASE]) / 100), rel=1e-6)
        assert r["sa"] == pytest.approx(_manual_accuracy(model, x, y, r["lam"], r["width"]), abs=1e-12)
        # FGSM is deterministic: reproduce its RA by hand.
        model.set_width(r["width"])
        x_adv = make_attack("fgsm", dataset="digits")(model, x, y, r["lam"])
        model.set_width(1.0)
        assert r["ra"]["fgsm"] == pytest.approx(_manual_accuracy(model, x_adv, y, r["lam"], r["width"]), abs=1e-12)
        assert 0.0 <= r["ra"]["pgd3"] <= 1.0 and r["ra"]["pgd3"] < r["sa"]
        # Worst case per image: clean right AND right under both attacks, by hand.
        x_pgd = make_attack("pgd3", dataset="digits")(model.set_width(r["width"]), x, y, r["lam"],
                                                        generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ok = ((model(x, r["lam"]).argmax(1) == y) & (model(x_adv, r["lam"]).argmax(1) == y)
                  & (model(x_pgd, r["lam"]).argmax(1) == y))
        model.set_width(1.0)
        assert r["ra"][WORST_CASE] == pytest.approx(int(ok.sum()) / len(y), abs=1e-12)
        assert r["ra"][WORST_CASE] <= min(r["sa"], r["ra"]["fgsm"], r["ra"]["pgd3"])
    # The model is left as it was found.
    assert (model.lam, model.width, model.training) == (0.4, 1.0, False)
    model.set_mode(1.0, 1.0)


def test_defaults_every_training_lambda_and_width_and_reproducible(model, test_set):
    model.train()
    try:
        a = evaluate_model(model, test_set, max_images=40, progress=False)
        b = evaluate_model(model, test_set, max_images=40, progress=False, batch_size=7)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert len(a) == len(S1) * 2
    assert sorted({r["lam"] for r in a}) == list(S1) and sorted({r["width"] for r in a}) == [0.5, 1.0]
    assert all(set(r["ra"]) == set(DEFAULT_ENSEMBLE) | {WORST_CASE} for r in a)  # the strong ensemble by default
    # SA does not depend on the batching; PGD with the same seed gives the same RA.
    assert [r["sa"] for r in a] == [r["sa"] for r in b]
    c = evaluate_model(model, test_set, max_images=40, progress=False)
    assert a == c


@pytest.mark.parametrize("kwargs, error, match", [
    ({"lambdas": [1.5]}, ModeError, r"λ must be in \[0, 1\]"),
    ({"lambdas": [float("nan")]}, ModeError, "λ must be"),
    ({"widths": [0.75]}, ModeError, "never trained; trained widths: 0.5, 1"),
    ({"attacks": ["pgd7", "deepfool"]}, ConfigError, "unknown attack 'deepfool'"),
    ({"attacks": ["pgd7", "pgd7"]}, ConfigError, "given twice"),
    ({"attacks": []}, ConfigError, "at least one attack"),
    ({"max_images": 0}, ConfigError, "max_images"),
    ({"batch_size": 0}, ConfigError, "batch size"),
])
def test_evaluate_rejects_bad_input(model, test_set, kwargs, error, match):
    with pytest.raises(error, match=match):
        evaluate_model(model, test_set, progress=False, **kwargs)


def test_json_and_plots(model, test_set, tmp_path):
    records = evaluate_model(model, test_set, lambdas=[0.0, 0.3, 1.0], attacks=("fgsm", "pgd2"),
                             max_images=30, progress=False)
    header = eval_header(test_set, ["fgsm", "pgd2"], 30)
    path = tmp_path / "out" / "eval.json"
    json_out(str(path), eval_json_doc(records, header))
    doc = json.loads(path.read_text())
    assert doc["schema"] == "oat-edge/eval" and doc["schema_version"] == 2
    assert doc["dataset"] == "digits" and doc["split"] == "test" and doc["n_images"] == 30
    assert doc["attacks"]["pgd2"] == {"eps": dataset_info("digits")["eps"], "steps": 2, "loss": "ce",
                                      "step_size": dataset_info("digits")["step_size"], "random_start": True}
    assert doc["robust_metric"] == WORST_CASE
    assert doc["records"] == records
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp files left

    import matplotlib.pyplot as plt

    paths = plot_tradeoff(records, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["lambda_fgsm.png", "lambda_pgd2.png", "lambda_worst_case.png",
                                             "tradeoff_fgsm.png", "tradeoff_pgd2.png", "tradeoff_worst_case.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
        image = plt.imread(p)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert float(np.std(image)) > 0.01  # not blank
    assert sorted(x.name for x in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)
    with pytest.raises(ConfigError, match="no evaluation records"):
        plot_tradeoff([], tmp_path / "plots")


def _eval_args(*argv):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_eval_cli_end_to_end(ckpt, tmp_path, capsys):
    from oat_edge.cli import main

    out_json, plots = tmp_path / "r.json", tmp_path / "plots"
    rc = main(["eval", str(ckpt), "--lambdas", "0", "1", "--widths", "0.5", "--attacks", "pgd2", "fgsm",
               "--json", str(out_json), "--plots", str(plots), "--max-images", "48", "--batch-size", "16",
               "--threads", "1", "--no-progress", "--no-masking-checks"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SA %" in printed and "RA pgd2 %" in printed and "RA fgsm %" in printed and "RA worst case %" in printed
    doc = json.loads(out_json.read_text())
    assert doc["checkpoint"]["method"] == "oats" and len(doc["checkpoint"]["sha256"]) == 64
    assert doc["n_images"] == 48 and set(doc["attacks"]) == {"pgd2", "fgsm"}
    assert [(r["lam"], r["width"]) for r in doc["records"]] == [(0.0, 0.5), (1.0, 0.5)]
    assert all(set(r) == {"lam", "width", "n", "sa", "ra", "se"} for r in doc["records"])
    assert "masking_checks" not in doc

    assert len(list(plots.glob("*.png"))) == 6
    # The table shows the same numbers as the JSON.
    assert f"{100 * doc['records'][0]['sa']:.2f}" in printed
    # The knob: RA gained and SA given up between the smallest and largest λ, with its uncertainty.
    assert doc["knob"] and doc["knob"][0]["width"] == 0.5
    assert "knob at width 0.5 (λ 0 → 1): worst-case RA" in printed


def test_eval_json_to_standard_output_like_every_json_option(ckpt, capsys):
    """`--json` with no FILE (or '-') writes the document to standard output; the table goes to
    standard error then, so the output parses."""
    from oat_edge.cli import main

    assert main(["eval", str(ckpt), "--lambdas", "1", "--widths", "0.5", "--attacks", "fgsm", "--json",
                 "--max-images", "16", "--threads", "1", "--no-progress", "--no-masking-checks"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["schema"] == "oat-edge/eval" and [(r["lam"], r["width"]) for r in doc["records"]] == [(1.0, 0.5)]
    assert "RA fgsm %" in err


def test_eval_defaults_to_the_eps_the_checkpoint_was_trained_with(ckpt, tmp_path):
    """A checkpoint is evaluated under its own threat model: its config's ε, not whatever the
    dataset's default is now; --eps still overrides it."""
    from oat_edge.checkpoint import load_checkpoint
    from oat_edge.cli import main

    payload = load_checkpoint(ckpt)
    payload["config"] = {"eps": 0.1}
    trained = tmp_path / "eps01.pt"
    save_checkpoint(trained, payload)
    common = ["--lambdas", "0", "--widths", "0.5", "--attacks", "pgd2", "--max-images", "16", "--threads", "1",
              "--no-progress", "--no-masking-checks"]
    for path, extra, eps in ((trained, [], 0.1), (trained, ["--eps", "0.3"], 0.3), (ckpt, [], dataset_info("digits")["eps"])):
        out = tmp_path / "r.json"
        assert main(["eval", str(path), *common, *extra, "--json", str(out)]) == 0
        assert json.loads(out.read_text())["attacks"]["pgd2"]["eps"] == pytest.approx(eps), (path, extra)


def test_eval_cli_matches_evaluate_model(ckpt, model, test_set, tmp_path):
    out = tmp_path / "r.json"
    assert run_eval(_eval_args(ckpt, "--lambdas", "0.2", "--attacks", "pgd3", "--max-images", "64",
                               "--json", out, "--no-progress", "--no-masking-checks")) == 0
    expected = evaluate_model(model, test_set, lambdas=[0.2], attacks=["pgd3"], max_images=64, progress=False)
    assert json.loads(out.read_text())["records"] == expected


@pytest.mark.parametrize("argv, error, match", [
    (["--attacks", "cw"], ConfigError, "unknown attack 'cw'"),
    (["--lambdas", "-0.1"], ModeError, r"\[0, 1\]"),
    (["--widths", "0.25"], ModeError, "never trained"),
    (["--max-images", "0"], ConfigError, "--max-images must be ≥ 1"),
    (["--eps", "2"], ConfigError, "must be ≤ 1"),
    (["--split", "val"], ConfigError, "splits train, test"),
    (["--restarts", "0"], ConfigError, "restarts must be"),
    (["--surrogate", "/nonexistent.pt"], ConfigError, "no such file"),
])
def test_eval_cli_bad_arguments(ckpt, argv, error, match):
    with pytest.raises(error, match=match):
        run_eval(_eval_args(ckpt, *argv, "--no-progress"))


def test_eval_cli_bad_checkpoints(ckpt, tmp_path, capsys):
    from oat_edge.cli import main

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, match in [(garbage, "not a readable oat-edge checkpoint"), (truncated, "not a readable oat-edge checkpoint"),
                        (foreign, "not an oat-edge checkpoint"), (tmp_path / "missing.pt", "does not exist")]:
        with pytest.raises(CheckpointError, match=match):
            run_eval(_eval_args(path, "--no-progress"))
    # Through the CLI: one line on stderr, exit code 2, no traceback, nothing written.
    out = tmp_path / "never.json"
    assert main(["eval", str(garbage), "--json", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "oat-edge eval: error:" in err and "Traceback" not in err
    assert not out.exists()


def test_masking_checks_pass_on_a_sound_model_and_catch_a_masked_one(ckpt, model, test_set, tmp_path):
    """The three checks on the trained tiny model (sound gradients: they pass, with a
    separately trained model, another seed, as the transfer surrogate), and on the same model
    behind a gradient-masking wrapper whose logits saturate (its PGD finds nothing at small
    steps while a transfer attack from the plain model still works): checks fail."""
    from oat_edge.training.masking import failed, masking_checks

    sub = test_set.subset(64)
    eps = 0.1
    other = train_clean_tiny(seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
    worst = {(1.0, 1.0): evaluate_model(model, sub, lambdas=[1.0], widths=[1.0], attacks=["pgd7"], progress=False,
                                        )[0]["ra"][WORST_CASE]}
    checks = masking_checks(model, sub, [(1.0, 1.0)], worst, eps, eps / 4, surrogate=other, surrogate_lam=1.0)
    assert {c["check"] for c in checks} == {"more_steps", "large_eps", "transfer"}
    assert not failed(checks), checks
    transfer = next(c for c in checks if c["check"] == "transfer")["values"]
    # a transferred attack is weaker than the white-box one on a sound model, not equal to it
    assert transfer["transfer_ra"] > transfer["white_box_ra"], transfer

    masked = _Masked(model)
    white = evaluate_model(masked, sub, lambdas=[1.0], widths=[1.0], attacks=["pgd7"], progress=False)[0]["ra"][WORST_CASE]
    checks = masking_checks(masked, sub, [(1.0, 1.0)], {(1.0, 1.0): white}, eps, eps / 4, surrogate=model,
                            surrogate_lam=1.0)
    bad = {c["check"] for c in failed(checks)}
    assert "transfer" in bad and "large_eps" in bad, checks


def test_eval_cli_default_is_the_worst_case_ensemble_with_masking_checks(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert run_eval(_eval_args(ckpt, "--lambdas", "0", "1", "--widths", "1", "--max-images", "40", "--json", out,
                               "--surrogate", ckpt, "--no-progress")) == 0
    doc = json.loads(out.read_text())
    assert list(doc["attacks"]) == list(DEFAULT_ENSEMBLE) and doc["robust_metric"] == WORST_CASE
    assert doc["attacks"]["apgd-ce"]["steps"] == 100 and doc["attacks"]["apgd-dlr"]["loss"] == "dlr"
    checks = doc["masking_checks"]
    assert {c["check"] for c in checks} == {"more_steps", "large_eps", "transfer", "black_box"}
    assert all(isinstance(c["passed"], bool) for c in checks)
    # The black-box check compares Square with the gradient attacks' own worst case.
    for rec in doc["records"]:
        assert rec["ra"]["worst_case"] <= rec["white_box"] <= rec["sa"]
    printed = capsys.readouterr().out
    assert "gradient-masking checks" in printed or "warning" in printed


def test_black_box_check_catches_masked_gradients_and_square_stays_in_the_ball(model, test_set):
    """Square reads only logits, so the rounding wrapper that zeroes every gradient cannot fool
    it: on the masked model the gradient attacks find almost nothing, Square still breaks images,
    and the black-box check fails; on the plain model it passes. Square's images stay within ε
    of the clean ones and within [0, 1]."""
    from oat_edge.training.masking import black_box_checks, failed

    sub = test_set.subset(64)
    eps = 0.2
    attacks = [make_attack(a, eps=eps, dataset="digits") for a in ("pgd7", "square")]

    plain = evaluate_model(model, sub, lambdas=[1.0], widths=[1.0], attacks=attacks, progress=False)
    masked = evaluate_model(_Masked(model), sub, lambdas=[1.0], widths=[1.0], attacks=attacks, progress=False)
    # Square ran only on the gradient attacks' survivors: its figure is the worst case.
    assert masked[0]["ra"]["square"] == masked[0]["ra"]["worst_case"] < masked[0]["white_box"] - 0.1, masked
    assert [c["check"] for c in failed(black_box_checks(masked, attacks))] == ["black_box"]
    assert not failed(black_box_checks(plain, attacks)), plain
    x, y = sub.tensors[0], sub.tensors[1]
    x_adv = attacks[1](model, x, y, 1.0, generator=torch.Generator().manual_seed(0))
    assert float((x_adv - x).abs().max()) <= eps + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_parallel_evaluation_gives_the_same_records(model, test_set):
    """jobs=2 spreads modes over processes; each (mode, attack) has its own seeded generator,
    so the records equal the single-process ones exactly, in the same order."""
    kwargs = dict(modes=[(0.0, 1.0), (1.0, 0.5), (0.2, 1.0)], attacks=["pgd3", "apgd-ce"], max_images=48,
                  progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker: the same arithmetic, so the same bits
    try:
        one = evaluate_model(model, test_set, **kwargs)
    finally:
        torch.set_num_threads(threads)
    two = evaluate_model(model, test_set, jobs=2, **kwargs)
    assert [(r["lam"], r["width"]) for r in two] == [(0.0, 1.0), (1.0, 0.5), (0.2, 1.0)]
    assert one == two


def test_precomputed_film_gives_the_same_records_as_running_the_generators(model, test_set, monkeypatch):
    # Eval reads each mode's FiLM γ/β from one precomputed vector instead of running the
    # generators at every attack step: a speed-up that must not change a single verdict.
    from oat_edge.models.base import FiLMCached

    modes = [(0.0, 0.5), (0.4, 1.0), (0.73, 0.5)]  # BN_c, a training λ, an unseen λ
    attacks = ("pgd7", "apgd-ce", "square")
    fast = evaluate_model(model, test_set, modes=modes, attacks=attacks, max_images=48, progress=False)
    wrapped = FiLMCached.wrap(model.set_width(0.5))
    assert wrapped is not model
    x = test_set.images[:16]
    with torch.no_grad():
        assert torch.equal(wrapped(x, 0.73), model(x, 0.73))
        per_sample = np.linspace(0, 1, 16)  # one λ per image, BN_c and BN_a mixed
        assert torch.equal(wrapped(x, per_sample), model(x, per_sample))
    model.set_width(1.0)
    monkeypatch.setattr(FiLMCached, "wrap", staticmethod(lambda m: m))
    slow = evaluate_model(model, test_set, modes=modes, attacks=attacks, max_images=48, progress=False)
    assert fast == slow


def test_knob_summary_gives_each_widths_span_with_its_uncertainty():
    from oat_edge.training.evaluate import format_knob, knob_summary

    def rec(lam, width, sa, ra, n=100):
        return {"lam": lam, "width": width, "n": n, "sa": sa, "ra": {"worst_case": ra}}

    records = [rec(0.0, 1.0, 0.99, 0.0), rec(0.5, 1.0, 0.9, 0.45), rec(1.0, 1.0, 0.89, 0.5),
               rec(1.0, 0.5, 0.80, 0.40, n=400), rec(0.0, 0.5, 0.96, 0.02, n=400)]
    knob = {k["width"]: k for k in knob_summary(records)}
    assert set(knob) == {0.5, 1.0}
    k = knob[1.0]
    assert (k["lam_low"], k["lam_high"]) == (0.0, 1.0)
    assert k["ra_gain"] == pytest.approx(50.0) and k["sa_cost"] == pytest.approx(10.0)
    # Hand-computed: sqrt(0·1/100 + .5·.5/100) and sqrt(.99·.01/100 + .89·.11/100), in points.
    assert k["ra_gain_se"] == pytest.approx(5.0) and k["sa_cost_se"] == pytest.approx(3.2833, abs=1e-4)
    assert knob[0.5]["ra_gain"] == pytest.approx(38.0) and knob[0.5]["sa_cost"] == pytest.approx(16.0)
    assert knob[0.5]["ra_gain_se"] == pytest.approx(100 * math.sqrt(.4 * .6 / 400 + .02 * .98 / 400))
    line = format_knob([k])[0]
    assert "width 1 (λ 0 → 1)" in line and "+50.0 ± 5.0" in line and "-10.0 ± 3.3" in line
    with pytest.raises(ConfigError, match="image count"):
        knob_summary([{"lam": 0.0, "width": 1.0, "sa": 1.0, "ra": {"worst_case": 0.0}}, rec(1.0, 1.0, 0.9, 0.5)])
