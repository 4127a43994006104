"""Resume: a run stopped after an epoch and resumed ends bit-identical to an uninterrupted run
(CPU), and a checkpoint that cannot continue this run is refused with one clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from oat_edge.checkpoint import load_checkpoint, save_checkpoint
from oat_edge.cli import main
from oat_edge.errors import CheckpointError
from oat_edge.training.config import TrainConfig
from oat_edge.training.trainers import Trainer, train

TINY = {"channels": [8, 16, 32]}


def cfg(out, **kw) -> TrainConfig:
    base = dict(dataset="digits", method="oats", arch_kwargs=dict(TINY), epochs=3, batch_size=32,
                max_train_images=128, progress=False, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def flat_optimizer_state(opt_state):
    return {f"{i}.{name}": t for i, s in opt_state["state"].items() for name, t in s.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "full.pt"
    return load_checkpoint(train(cfg(out)))


def test_stop_and_resume_gives_exactly_the_uninterrupted_weights(tmp_path, uninterrupted):
    out = tmp_path / "run.pt"
    Trainer(cfg(out)).fit(stop_after=1)  # as if the process died during epoch 2
    first = load_checkpoint(out)
    assert first["epoch"] == 1
    assert not all(torch.equal(first["model"][k], uninterrupted["model"][k]) for k in first["model"])

    train(cfg(out), resume=str(out))
    resumed = load_checkpoint(out)
    assert resumed["epoch"] == 3
    assert_same_state(resumed["model"], uninterrupted["model"])  # weights, BN stats, λ codes
    assert_same_state(flat_optimizer_state(resumed["optimizer"]), flat_optimizer_state(uninterrupted["optimizer"]))
    assert resumed["scheduler"]["last_epoch"] == uninterrupted["scheduler"]["last_epoch"]
    assert [h["loss"] for h in resumed["metrics"]["history"]] == [h["loss"] for h in uninterrupted["metrics"]["history"]]


def test_resume_restores_the_stored_code_matrix(tmp_path):
    """The λ-code matrix comes from the checkpoint, never regenerated from the seed."""
    out = tmp_path / "run.pt"
    Trainer(cfg(out, epochs=2)).fit(stop_after=1)
    payload = load_checkpoint(out)
    payload["model"]["code_matrix"] = torch.flip(payload["model"]["code_matrix"], dims=[0])
    save_checkpoint(out, payload)
    trainer = Trainer(cfg(out, epochs=2), resume=str(out))
    assert torch.equal(trainer.model.code_matrix, payload["model"]["code_matrix"])
    assert trainer.start_epoch == 1


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(method="oat", widths=[1.0]), "method oats on digits (resnet_tiny), this run asks for method oat"),
        (dict(method="pgd-ats"), "method pgd-ats"),
        (dict(dataset="cifar10"), "on cifar10"),
        (dict(arch="resnet34", arch_kwargs={}), "(resnet34)"),
        (dict(lr=0.5), "lr"),
        (dict(lambdas=[0.0, 1.0]), "lambdas"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, change, needle):
    out = tmp_path / "run.pt"
    Trainer(cfg(out, epochs=2)).fit(stop_after=1)
    before = out.read_bytes()
    with pytest.raises(CheckpointError) as info:
        Trainer(cfg(tmp_path / "other.pt", epochs=2, **change), resume=str(out))
    assert needle in str(info.value)
    assert out.read_bytes() == before and not (tmp_path / "other.pt").exists()


def test_resume_refuses_files_that_are_not_resumable_checkpoints(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not an oat-edge checkpoint"):
        Trainer(cfg(tmp_path / "x.pt"), resume=str(foreign))
    out = tmp_path / "run.pt"
    Trainer(cfg(out, epochs=2)).fit(stop_after=1)
    payload = load_checkpoint(out)
    del payload["optimizer"]
    save_checkpoint(tmp_path / "export_only.pt", payload)
    with pytest.raises(CheckpointError, match="no optimizer"):
        Trainer(cfg(tmp_path / "y.pt", epochs=2), resume=str(tmp_path / "export_only.pt"))


def test_cli_resume_reuses_the_stored_settings_and_rejects_contradictions(tmp_path, capsys, uninterrupted):
    out = tmp_path / "run.pt"
    Trainer(cfg(out)).fit(stop_after=1)
    capsys.readouterr()
    # A contradicting explicit argument: one line, exit 2, the checkpoint untouched.
    before = out.read_bytes()
    assert main(["train", "--resume", str(out), "--method", "pgd-at", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and "pgd-at" in err[0]
    assert out.read_bytes() == before
    # No other argument: the stored config continues, in place, to the same weights.
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert_same_state(load_checkpoint(out)["model"], uninterrupted["model"])


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """A real SIGKILL in the middle of an epoch (not a polite stop), then `--resume`."""
    args = ["--dataset", "digits", "--method", "oats", "--arch-kwargs", '{"channels": [8, 16, 32]}',
            "--epochs", "4", "--batch-size", "32", "--max-train-images", "384", "--threads", "1", "--no-progress"]
    cli = [sys.executable, "-m", "oat_edge.cli", "train"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(cli + args + ["--out", str(tmp_path / "full.pt")], check=True, env=env, capture_output=True, timeout=600)

    out = tmp_path / "killed.pt"
    proc = subprocess.Popen(cli + args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not out.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = load_checkpoint(out)["epoch"]
    assert 1 <= killed_at < 4, "the run must have been killed part-way"
    subprocess.run(cli + ["--resume", str(out), "--threads", "1", "--no-progress"], check=True, env=env,
                   capture_output=True, timeout=600)
    assert_same_state(load_checkpoint(out)["model"], load_checkpoint(tmp_path / "full.pt")["model"])
