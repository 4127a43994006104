"""`oat-edge reproduce`: the quick suite end to end (real training and the worst-case
evaluation), resuming an interrupted suite, and the committed default-suite report being what
the code renders from the committed results."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from oat_edge.errors import ConfigError
from reproduce.report import load_results, render_markdown, summarize
from reproduce.runner import execute_suite
from reproduce.suite import available_features, build_suite, train_config

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "benchmarks" / "results" / "reproduction"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick suite run once into a folder (two spawned workers, like the command)."""
    out = tmp_path_factory.mktemp("repro") / "quick"
    suite = build_suite("quick")
    path = execute_suite(suite, out, jobs=2, progress=False, log=lambda *a: None)
    return suite, out, path


@pytest.mark.slow
def test_quick_suite_trains_evaluates_and_reports(quick):
    suite, out, path = quick
    doc = load_results(path)
    assert set(doc["runs"]) == {r.name for r in suite.runs}
    for run in suite.runs:
        if run.kind != "train":
            continue
        result = doc["runs"][run.name]
        # Every trained model is a checkpoint trained for the recipe's epochs.
        import torch

        payload = torch.load(out / "runs" / run.name / "ckpt.pt", map_location="cpu", weights_only=True)
        assert payload["epoch"] == suite.recipe.epochs
        assert result["train_seconds"] > 0 and result["eval_seconds"] > 0
        widths = run.widths or [1.0]
        assert len(result["records"]) == len(run.eval_lambdas) * len(widths) + sum(map(len, run.eval_encodings.values()))
        for rec in result["records"]:
            assert rec["n"] == suite.recipe.eval_images
            assert 0.0 <= rec["ra"]["worst_case"] <= min(rec["sa"], *[v for k, v in rec["ra"].items()])
    # Trained, not placeholders: clean accuracy far above chance (10 %) and models that differ.
    sa = {name: [r["sa"] for r in res["records"]] for name, res in doc["runs"].items() if res["kind"] == "train"}
    assert max(sa["oat-s1_s0"]) > 0.4 and max(sa["pgdat-0_s0"]) > 0.4
    assert len({tuple(v) for v in sa.values()}) > 1
    # The comparisons the acceptance needs are in results.json ...
    comps = doc["summary"]["comparisons"]
    figures = {c["figure"] for c in comps}
    assert {"fig4", "fig4-bn", "fig5", "fig6"} <= figures
    fig4 = [c for c in comps if c["what"] == "OAT vs dedicated PGD-AT (λ ∈ S1)"]
    assert sorted({c["lam"] for c in fig4}) == suite.s1 and {c["metric"] for c in fig4} == {"SA", "RA"}
    assert any(c["figure"] == "fig4-bn" and c["lam"] == 0.0 and c["metric"] == "SA" for c in comps)
    assert {c["width"] for c in comps if c["figure"] == "fig6"} == set(suite.slim_widths)
    for c in comps:
        assert c["diff"] == pytest.approx(c["a_mean"] - c["b_mean"], abs=0.011)
        assert c["exceeds_noise"] == (abs(c["diff"]) > c["noise"])
    # ... recomputed identically from the runs, and the report is rendered from them.
    assert summarize(doc) == json.loads(json.dumps(doc["summary"]))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report == render_markdown(doc)
    for title in ("## Fig. 4 / 8", "## Fig. 5", "## Fig. 6 / 9", "## Fig. 13", "## Figs. 10-12", "## Training cost",
                  "## Dual BN vs normal BN"):
        assert title in report
    timing = doc["summary"]["timing"]["median_seconds_per_epoch"]
    assert set(timing) == {"oat", "pgd-at", "oats", "pgd-ats"} and all(v > 0 for v in timing.values())
    pngs = ["fig4_sa_ra.png", "fig8_lambda.png", "fig5_unseen.png", "fig6_oats.png", "fig13_encoding.png"]
    # The figures that need the λ encodings and the saliency functions, where this build has them.
    feats = available_features()
    if feats["saliency"]:
        sal = doc["summary"]["saliency"]
        assert [r["lam"] for r in sal] == suite.saliency_lambdas
        assert all(math.isfinite(r["oat_alignment"]) and math.isfinite(r["pgdat_alignment"]) for r in sal)
        maps = doc["runs"]["saliency"]["per_lambda"][0]["oat_maps"]
        assert max(abs(v) for m in maps for line in m for v in line) == 1.0  # real gradients, scaled
        pngs += ["fig10_saliency.png", "fig12_alignment.png"]
    else:
        assert "saliency" not in doc["runs"] and any("saliency" in m for m in doc["suite"]["missing"])
    alternatives = [e for e in feats["encodings"] if e.startswith("ro-")]
    assert sorted(doc["summary"]["unseen_encoding"]["scores"]) == sorted(["ro", *alternatives])
    if "scalar" in feats["encodings"]:
        assert any(c["a"] == "scalar" for c in comps if c["figure"] == "fig13")
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_interrupted_suite_resumes_half_trained_run_and_skips_finished(quick):
    suite, first_out, _ = quick
    out = first_out.parent / "resumed"
    shutil.copytree(first_out, out)
    victim = suite.run("pgdat-1_s0")
    folder = out / "runs" / victim.name
    reference = folder / "ckpt-uninterrupted.pt"
    (folder / "ckpt.pt").rename(reference)
    (folder / "result.json").unlink()
    (out / "results.json").unlink()
    # The state a kill after epoch 1 leaves: a one-epoch checkpoint and no result.
    from oat_edge.training.trainers import Trainer

    trainer = Trainer(train_config(victim, suite.recipe, str(folder / "ckpt.pt")))
    trainer.fit(stop_after=1)
    trainer.ctx.close()
    stamps = {r.name: (out / "runs" / r.name / "result.json").stat().st_mtime_ns
              for r in suite.runs if r.name != victim.name}

    execute_suite(suite, out, jobs=1, progress=False, log=lambda *a: None)

    for name, stamp in stamps.items():  # finished runs were not run again
        assert (out / "runs" / name / "result.json").stat().st_mtime_ns == stamp
    result = json.loads((folder / "result.json").read_text())
    assert result["resumed_at_epoch"] == 1
    import torch

    resumed = torch.load(folder / "ckpt.pt", map_location="cpu", weights_only=True)
    straight = torch.load(reference, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == suite.recipe.epochs
    for key, value in straight["model"].items():  # exact resume on the CPU
        assert torch.equal(resumed["model"][key], value), key
    doc = load_results(out / "results.json")
    assert doc["runs"][victim.name]["records"] == json.loads((first_out / "results.json").read_text())["runs"][victim.name]["records"]
    assert len(doc["sessions"]) == 2


def test_default_suite_has_every_figure_and_three_seeds():
    feats = {"encodings": ["ro", "ro-slerp", "scalar"], "saliency": True}
    suite = build_suite("default", features=feats)
    groups = {r.group for r in suite.runs}
    assert len(suite.seeds) == 3 and not suite.missing
    assert {"oat-s1", "oat-s1-nbn", "oat-s2", "oats-s1", "oat-s1-ro16", "oat-s1-scalar", "timing", "saliency"} <= groups
    assert {f"pgdat-{lam:g}" for lam in suite.s1 + suite.s3} <= groups
    oat = suite.run("oat-s1_s0")
    assert set(suite.s3) <= set(oat.eval_lambdas) and oat.eval_encodings == {"ro-slerp": suite.s3}
    assert suite.run("oat-s1-nbn_s2").arch_kwargs == {"dual_bn": False}
    assert all(name in {r.name for r in suite.runs} for name in suite.run("saliency").after)
    # Without i9b's features those figures are left out and named.
    bare = build_suite("default", features={"encodings": ["ro"], "saliency": False})
    assert len(bare.missing) == 3 and "saliency" not in {r.group for r in bare.runs}
    assert not any("lambda_encoding" in r.arch_kwargs for r in bare.runs)


def test_bad_arguments_fail_with_one_clear_error(tmp_path, capsys):
    from oat_edge.cli import main

    with pytest.raises(ConfigError, match="seeds"):
        build_suite("default", seeds=0)
    with pytest.raises(SystemExit) as info:  # a count below 1 is refused by the parser, as in every command
        main(["reproduce", "--suite", "quick", "--jobs", "0", "--out", str(tmp_path)])
    assert info.value.code == 2 and "--jobs: must be ≥ 1" in capsys.readouterr().err
    assert main(["reproduce", "--report-only", "--out", str(tmp_path)]) == 2
    assert "results" in capsys.readouterr().err
    assert main(["reproduce", "--suite", "quick", "--data-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "--suite", "quick", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert main(["reproduce", "--suite", "svhn", "--out", str(tmp_path)]) == 2
    assert "svhn" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["reproduce", "--suite", "quick", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_committed_report_is_rendered_from_committed_results():
    results = COMMITTED / "results.json"
    if not results.is_file():
        pytest.skip(f"{results.relative_to(ROOT)} is not committed yet (the lead commits the default suite's output)")
    doc = load_results(results)
    assert summarize(doc) == doc["summary"], "results.json's comparisons are not what report.py computes"
    assert render_markdown(doc).encode("utf-8") == (COMMITTED / "report.md").read_bytes()


@pytest.mark.parametrize("a,b,n,diff,noise,exceeds", [
    # 3 seeds each: SE = sqrt(2²/3 + 4²/3) = 2.582, noise = 2·SE = 5.164.
    ([90.0, 92.0, 94.0], [84.0, 88.0, 92.0], 360, 4.0, 5.164, False),  # 1·SE (2.58) would call it real
    ([90.0, 92.0, 94.0], [80.0, 84.0, 88.0], 360, 8.0, 5.164, True),  # without /k (noise 8.94) it would not
    # one seed: the binomial variance of n images, 100²·p(1 − p)/n: sqrt(9.79 + 16) = 5.078.
    ([89.0], [80.0], 100, 9.0, 10.157, False),
])
def test_noise_verdict_matches_hand_computed_values(a, b, n, diff, noise, exceeds):
    """Δ exceeds the seed noise when |Δ| > 2·sqrt(s_A²/k_A + s_B²/k_B) (sample std, ddof 1):
    hand-computed, so a 1·SE rule or a dropped /k fails here."""
    from reproduce.report import _compare, _stats

    group = lambda values: {m: _stats(values, n) for m in ("sa", "ra")}  # noqa: E731
    for row in _compare("fig4", "test", 0.0, 1.0, "A", "B", group(a), group(b)):
        assert row["diff"] == pytest.approx(diff, abs=1e-9)
        assert row["noise"] == pytest.approx(noise, abs=0.006)
        assert row["exceeds_noise"] is exceeds
        # minimum detectable difference, 5 % two-sided and 80 % power: (1.960 + 0.842)·SE
        assert row["mdd"] == pytest.approx(2.8016 * noise / 2, abs=0.006)


def test_reproduce_without_the_checkout_says_where_the_harness_is(monkeypatch, tmp_path, capsys):
    """Installed without the source checkout, `oat-edge reproduce` is one clear error, not a crash."""
    from oat_edge import cli
    from oat_edge.training import cli as training_cli

    monkeypatch.setattr(training_cli, "_reproduce_harness", lambda: None)
    assert cli.main(["reproduce", "--help"]) == 2 and "source checkout" in capsys.readouterr().err
    assert cli.main(["reproduce", "--suite", "quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("oat-edge reproduce: error:") and "source checkout" in err[0]
    assert list(tmp_path.iterdir()) == []
