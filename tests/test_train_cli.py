"""`oat-edge train` / `oat-edge eval` from the command line: help, bad input (one clear line,
exit 2, nothing written), a tiny run end to end, and (slow) the OATS trade-off on digits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from oat_edge.checkpoint import load_checkpoint
from oat_edge.cli import main

TINY = '{"channels": [8, 16, 32]}'


def test_help_lists_train_and_eval_without_importing_torch():
    code = (
        "import sys; from oat_edge.cli import build_parser; p = build_parser(); "
        "h = p.format_help(); print('train' in h, 'eval' in h, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]
    for sub in ("train", "eval"):
        proc = subprocess.run([sys.executable, "-m", "oat_edge.cli", sub, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: oat-edge " + sub in proc.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--arch", "resnet1000"], "unknown architecture 'resnet1000'"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--method", "trades"], "unknown training method 'trades'"),
        (["--lambdas", "0", "1.5"], "λ values must be numbers in [0, 1]"),
        (["--lambdas", "-0.1"], "λ values must be numbers in [0, 1]"),
        (["--widths", "0", "1"], "widths must be numbers in (0, 1]"),
        (["--widths", "1.25"], "widths must be numbers in (0, 1]"),
        (["--method", "pgd-at", "--widths", "0.5", "1.0"], "pgd-at trains one full-width network"),
        (["--method", "oat", "--widths", "0.5", "1.0"], "oat trains one full-width network"),
        (["--method", "pgd-ats", "--lambdas", "0.5", "1"], "pgd-ats trains at one fixed λ"),
        (["--arch-kwargs", '{"widths": [1]}'], "set by the method (oats) and dataset"),
        (["--epochs", "0"], "epochs must be ≥ 1"),
        (["--dataset", "cifar10"], "--data-dir"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "is not a folder"),
        (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_arguments_give_one_clear_error_and_write_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "ckpt.pt"
    assert main(["train", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("oat-edge train: error:") and needle in err[0], err[0]
    assert list(tmp_path.iterdir()) == []


def test_out_is_required_and_resume_needs_a_checkpoint(tmp_path, capsys):
    assert main(["train", "--dataset", "digits"]) == 2
    assert "--out CKPT is required" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_tiny_train_then_eval_from_the_cli(tmp_path, capsys):
    ckpt, results = tmp_path / "ckpt.pt", tmp_path / "r.json"
    rc = main(["train", "--dataset", "digits", "--method", "oats", "--widths", "0.5", "1.0", "--lambdas", "0", "0.5", "1",
               "--arch-kwargs", TINY, "--epochs", "1", "--batch-size", "32", "--max-train-images", "96",
               "--no-progress", "--out", str(ckpt)])
    assert rc == 0
    assert f"checkpoint: {ckpt}" in capsys.readouterr().out
    ck = load_checkpoint(ckpt)
    assert ck["method"] == "oats" and ck["widths"] == [0.5, 1.0] and ck["train_lambdas"] == [0.0, 0.5, 1.0]
    assert ck["config"]["max_train_images"] == 96 and ck["dataset"]["train_images"] == 96

    rc = main(["eval", str(ckpt), "--lambdas", "0", "1", "--max-images", "40", "--no-progress", "--json", str(results)])
    assert rc == 0
    records = json.loads(results.read_text())["records"]
    assert sorted((r["lam"], r["width"]) for r in records) == [(0.0, 0.5), (0.0, 1.0), (1.0, 0.5), (1.0, 1.0)]
    assert all(0.0 <= r["ra"]["worst_case"] <= min(r["sa"], r["ra"]["pgd7"], r["ra"]["apgd-ce"]) for r in records)


@pytest.mark.slow
def test_oats_on_digits_trades_accuracy_for_robustness_at_every_width(tmp_path):
    """The README's promise in one test: `oat-edge train --dataset digits --method oats` with the
    default recipe gives a λ knob at every width. Under the worst-case ensemble λ = 1 is at least
    10 points more robust than λ = 0 and really robust, λ = 0 is at least as accurate as λ = 1,
    and both are useful models (docs/robustness.md: the recipe and the figures behind it)."""
    ckpt, results = tmp_path / "ckpt.pt", tmp_path / "r.json"
    assert main(["train", "--dataset", "digits", "--method", "oats", "--widths", "0.5", "0.75", "1.0",
                 "--no-progress", "--out", str(ckpt)]) == 0
    assert main(["eval", str(ckpt), "--lambdas", "0", "1", "--no-progress", "--no-masking-checks",
                 "--json", str(results)]) == 0
    doc = json.loads(results.read_text())
    assert all(a["eps"] == 0.25 for a in doc["attacks"].values())  # the model's own threat model
    records = {(r["lam"], r["width"]): r for r in doc["records"]}
    for width in (0.5, 0.75, 1.0):
        clean, robust = records[(0.0, width)], records[(1.0, width)]
        assert robust["ra"]["worst_case"] >= clean["ra"]["worst_case"] + 0.10, (width, clean, robust)
        assert robust["ra"]["worst_case"] > 0.25, (width, robust)  # real robustness, not PGD-7's
        assert clean["sa"] >= robust["sa"], (width, clean, robust)
        assert robust["sa"] > 0.85  # a useful model, not a trivial one


def test_device_and_threads_mean_the_same_in_train_and_eval(tmp_path, capsys):
    """--device takes auto, cpu, cuda or cuda:N in every command (one error otherwise); --threads
    below 1 is refused by the parser in every command."""
    for command in (["train", "--dataset", "digits", "--out", str(tmp_path / "c.pt")], ["eval", str(tmp_path / "c.pt")]):
        assert main([*command, "--device", "tpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "device must be auto, cpu, cuda or cuda:N, got 'tpu'" in err[0], err
        with pytest.raises(SystemExit) as info:
            main([*command, "--threads", "0"])
        assert info.value.code == 2 and "--threads: must be ≥ 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
