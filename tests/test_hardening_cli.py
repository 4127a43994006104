"""Hardening, training/CLI side: NaN guards, outputs checked before work, `oat-edge run` edge
cases, checkpoint metadata, litter and atomic --force, checkpoint messages. One test (or one
parametrised family) per numbered case."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hardening_support import bundle, checkpoint
from oat_edge.checkpoint import load_checkpoint, save_checkpoint
from oat_edge.cli import main
from oat_edge.errors import CheckpointError, ConfigError, OatEdgeError, TrainingError

pytestmark = pytest.mark.filterwarnings("ignore::oat_edge.bundle.signature.UnsignedBundleWarning")

TINY = '{"channels": [4, 8, 8]}'
QUICK = ["--dataset", "digits", "--method", "oats", "--widths", "0.5", "1.0", "--lambdas", "0", "1",
         "--arch-kwargs", TINY, "--batch-size", "32", "--max-train-images", "64", "--no-progress", "--threads", "1"]


def one_error_line(capsys, command):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"oat-edge {command}: error:"), err
    return err[0]


# --- case 6: a NaN loss stops training -----------------------------------------------------------------
def test_case6_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    from oat_edge.training.cli import config_from_args
    from oat_edge.training.trainers import Trainer

    out = tmp_path / "ckpt.pt"
    # From the CLI: --lr 1e6 diverges (within 3 epochs); an error line naming the step, exit 2,
    # and whatever checkpoint exists holds finite weights (it loads).
    from oat_edge.checkpoint import load_model

    assert main(["train", *QUICK, "--epochs", "3", "--lr", "1e6", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("oat-edge train: error: training diverged") and "step " in line
    if out.exists():
        assert "last good checkpoint" in line
        load_model(out)
        out.unlink()
    else:
        assert "no checkpoint was written" in line
    # One good epoch first, then a divergence: the checkpoint of the good epoch stays.
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    good = out.read_bytes()
    import argparse

    args = argparse.Namespace(**{k: None for k in ("dataset", "method", "arch", "arch_kwargs", "widths", "lambdas",
                                                   "epochs", "batch_size", "lr", "weight_decay", "seed", "attack",
                                                   "eps", "step_size", "data_dir", "max_train_images", "device",
                                                   "amp", "threads", "eval_every", "eval_max_images", "out")},
                              resume=str(out), no_progress=True)
    args.epochs = 3
    trainer = Trainer(config_from_args(args), resume=str(out))
    trainer.scheduler.base_lrs = [1e6] * len(trainer.scheduler.base_lrs)  # the run blows up in epoch 2 or 3
    with pytest.raises(TrainingError, match=r"epoch [23].*step \d+.*last good checkpoint") as info:
        trainer.fit()
    trainer.ctx.close()
    assert "\n" not in str(info.value)
    kept = load_checkpoint(out)
    failed_epoch = kept["epoch"] + 1  # the checkpoint is the epoch before the NaN, not a NaN one
    assert f"epoch {failed_epoch}" in str(info.value)
    load_model(out)  # finite weights
    if failed_epoch == 2:
        assert out.read_bytes() == good


def test_case6_checkpoints_with_non_finite_weights_are_refused(tmp_path):
    from oat_edge.checkpoint import load_model

    payload = load_checkpoint(checkpoint())
    payload["model"] = dict(payload["model"])
    name = next(k for k, v in payload["model"].items() if v.is_floating_point() and v.numel() > 1)
    payload["model"][name] = payload["model"][name].clone()
    payload["model"][name].view(-1)[0] = float("nan")
    bad = save_checkpoint(tmp_path / "nan.pt", payload)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(bad)  # eval and export load through here
    from oat_edge.export import export_bundle

    with pytest.raises(CheckpointError, match="non-finite"):
        export_bundle(bad, tmp_path / "b", tensorrt="off", progress=False)


# --- case 7: outputs checked before any work ---------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if training, evaluation, benchmarking or loading a bundle starts."""
    import oat_edge.runtime as runtime_pkg
    import oat_edge.bench.run as bench
    import oat_edge.training.trainers as trainers

    def boom(*a, **k):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(trainers, "train", boom)
    monkeypatch.setattr(bench, "run_benchmark", boom)
    monkeypatch.setattr(runtime_pkg, "Runtime", boom)
    monkeypatch.setattr("oat_edge.checkpoint.load_model", boom)


def _unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    return ro / "file" / "out.json"  # a path under a regular file: never writable, even for root


@pytest.mark.parametrize("command", ["train-folder", "train", "eval", "run", "bench"])
def test_case7_unwritable_outputs_fail_before_any_work(tmp_path, capsys, no_work, command):
    bad = _unwritable(tmp_path)
    argv = {
        "train-folder": ["train", *QUICK, "--epochs", "1", "--out", str(tmp_path)],
        "train": ["train", *QUICK, "--epochs", "1", "--out", str(bad)],
        "eval": ["eval", str(checkpoint()), "--json", str(bad)],
        "run": ["run", str(bundle()), "--images", "random", "--json", str(bad)],
        "bench": ["bench", str(bundle()), "--json", str(bad)],
    }[command]
    assert main(argv) == 2
    one_error_line(capsys, argv[0])


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: "
                                                "PytorchStreamWriter failed writing file data/0: file write failed")])
def test_case7_a_full_disk_is_one_checkpoint_error(tmp_path, monkeypatch, error):
    payload = load_checkpoint(checkpoint())

    def full(*a, **k):
        raise error

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(tmp_path / "c.pt", payload)
    assert "\n" not in str(info.value) and ("no space" in str(info.value) or "disk full" in str(info.value))
    assert not [p for p in tmp_path.iterdir()]  # no temp file left either


# --- case 8: oat-edge run edge cases ---------------------------------------------------------------------
@pytest.mark.parametrize("extra", [["--batch", "-1"], ["--batch", "0"], ["--count", "0"], ["--count", "-3"], ["--n", "0"],
                                   ["--threads", "0"], ["--threads", "-1"]])
def test_case8_run_refuses_non_positive_counts(capsys, extra):
    with pytest.raises(SystemExit) as info:
        main(["run", str(bundle()), "--images", "random", *extra])
    assert info.value.code == 2
    assert "must be ≥ 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["verify", "bench"])
@pytest.mark.parametrize("threads", ["0", "-1"])
def test_case8_verify_and_bench_refuse_non_positive_threads(capsys, command, threads):
    try:
        rc = main([command, str(bundle()), "--threads", threads])
    except SystemExit as e:
        rc = e.code
    assert rc == 2


@pytest.mark.parametrize("array", [np.zeros((0, 1, 8, 8), np.float32), np.float32(0.5)], ids=["empty", "0-d"])
def test_case8_empty_and_scalar_npy_give_one_line(tmp_path, capsys, array):
    f = tmp_path / "x.npy"
    np.save(f, array)
    assert main(["run", str(bundle()), "--images", str(f), "--threads", "1"]) == 2
    one_error_line(capsys, "run")


def test_case8_batch_splits_and_predicts_every_image(capsys):
    assert main(["run", str(bundle()), "--images", "random", "--count", "5", "--batch", "2", "--threads", "1"]) == 0
    assert "│     4 │" in capsys.readouterr().out


# --- case 9: checkpoint metadata of the wrong type -----------------------------------------------------------
BAD_METADATA = {
    "arch_kwargs-list": lambda p: p.update(arch_kwargs=[1, 2]),
    "widths-strings": lambda p: p["arch_kwargs"].update(widths=["a", "b"]),
    "dataset-string": lambda p: p.update(dataset="digits"),
    "epoch-string": lambda p: p.update(epoch="x"),
}


@pytest.mark.parametrize("mutation", sorted(BAD_METADATA))
def test_case9_wrong_metadata_types_are_one_checkpoint_error(tmp_path, capsys, mutation):
    payload = load_checkpoint(checkpoint())
    payload["arch_kwargs"] = dict(payload["arch_kwargs"])
    BAD_METADATA[mutation](payload)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)  # bypasses save_checkpoint's own check, like a foreign writer
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert main(["export", str(path), "-o", str(tmp_path / "b"), "--tensorrt", "off", "--no-progress"]) == 2
    one_error_line(capsys, "export")
    assert main(["eval", str(path), "--max-images", "4", "--no-progress"]) == 2
    one_error_line(capsys, "eval")


def test_case9_huge_num_classes_is_refused_before_allocating(tmp_path, capsys):
    payload = load_checkpoint(checkpoint())
    payload["arch_kwargs"] = dict(payload["arch_kwargs"], num_classes=10**9)
    path = tmp_path / "huge.pt"
    torch.save(payload, path)
    t0 = time.perf_counter()
    assert main(["export", str(path), "-o", str(tmp_path / "b"), "--tensorrt", "off", "--no-progress"]) == 2
    assert "num_classes" in one_error_line(capsys, "export")
    assert time.perf_counter() - t0 < 20


@pytest.mark.parametrize("kwargs", ['{"channels": "x"}', '{"channels": [8, "a", 8]}', '{"num_classes": 1e9}'])
def test_case9_bad_arch_kwargs_on_the_command_line_are_one_line(tmp_path, capsys, kwargs):
    argv = ["train", "--dataset", "digits", "--arch-kwargs", kwargs, "--epochs", "1", "--max-train-images", "64",
            "--no-progress", "--threads", "1", "--out", str(tmp_path / "c.pt")]
    assert main(argv) == 2
    one_error_line(capsys, "train")


# --- case 11: litter and atomic --force -------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_case11_stale_temp_folders_and_files_are_cleaned_on_the_next_run(tmp_path):
    from oat_edge.export import export_bundle

    dead = _dead_pid()
    stale_dir = tmp_path / f".b.p{dead}-abc.tmp"
    stale_dir.mkdir()
    (stale_dir / "manifest.json").write_text("{}")
    old_format = tmp_path / ".b.xyz123.tmp"  # written before temp names carried a pid
    old_format.mkdir()
    os.utime(old_format, (time.time() - 7200, time.time() - 7200))
    live = tmp_path / f".b.p{os.getpid()}-live.tmp"  # a run in progress: left alone
    live.mkdir()
    export_bundle(checkpoint(), tmp_path / "b", widths=[1.0], tensorrt="off", progress=False, parity_images=8)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["b", live.name]), names
    stale_file = tmp_path / f".c.pt.p{dead}-q.tmp"
    stale_file.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "c.pt", load_checkpoint(checkpoint()))
    assert not stale_file.exists() and (tmp_path / "c.pt").is_file()


def test_case11_force_swaps_in_one_step(tmp_path, monkeypatch):
    """renameat2(RENAME_EXCHANGE): with os.replace broken, a --force replacement still works, so it
    did not go through the two-rename window."""
    from oat_edge import fileio

    target = tmp_path / "b"
    target.mkdir()
    (target / "v").write_text("old")
    if not fileio.exchange(tmp_path / "b", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")

    def no_replace(*a, **k):
        raise AssertionError("two-rename swap used")

    monkeypatch.setattr(fileio.os, "replace", no_replace)
    with fileio.atomic_directory(target, overwrite=True) as tmp:
        (tmp / "v").write_text("new")
    assert (target / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_case11_an_interrupted_two_rename_swap_is_recovered_on_the_next_run(tmp_path, monkeypatch):
    from oat_edge import fileio
    from oat_edge.export import export_bundle

    target = tmp_path / "b"
    target.mkdir()
    (target / "v").write_text("old")
    monkeypatch.setattr(fileio, "exchange", lambda a, b: False)  # e.g. not Linux
    real_replace = os.replace
    calls = []

    def crash_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between the two renames
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", crash_second)
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_directory(target, overwrite=True) as tmp:
            (tmp / "v").write_text("new")
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert not target.exists()  # the window a crash mid-swap leaves ...
    # ... closed by the next run into the same parent: the old bundle is back before anything else.
    with pytest.raises(OatEdgeError, match="already exists"):
        export_bundle(checkpoint(), target, tensorrt="off", progress=False)
    assert (target / "v").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# --- case 12: checkpoint messages -----------------------------------------------------------------------------
def test_case12_checkpoint_errors_never_advise_weights_only_false(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "oat-edge/checkpoint", "x": Evil()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value) and "pwned" not in capsys.readouterr().out
    assert "could run code" in str(info.value)
