"""Training speed measured side by side (oat_edge.training.throughput): what the throughput
script, the GPU check and the reproduction suite's timing all call. Real trainers on a digits
subset; no timing is asserted, only which steps ran and what came back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from oat_edge.training.config import TrainConfig
from oat_edge.training.throughput import interleaved_step_seconds, time_steps
from oat_edge.training.trainers import Trainer

TINY = {"channels": [8, 16, 32]}


def _trainer(tmp_path, method: str) -> Trainer:
    return Trainer(TrainConfig(dataset="digits", method=method, arch_kwargs=dict(TINY), epochs=1, batch_size=32,
                               max_train_images=64, progress=False, out=str(tmp_path / f"{method}.pt")))


def _record_steps(trainer, log, name):
    step = trainer.train_step

    def recorded(epoch, i, x, y):
        log.append((name, epoch, i, len(x)))
        return step(epoch, i, x, y)

    trainer.train_step = recorded


def test_rounds_interleave_the_trainers_and_wrap_around_the_epoch(tmp_path):
    trainers = {m: _trainer(tmp_path, m) for m in ("oat", "pgd-at")}
    assert all(t.steps_per_epoch == 2 for t in trainers.values())
    log, rounds_seen = [], []
    for name, t in trainers.items():
        _record_steps(t, log, name)
    seconds = interleaved_step_seconds(trainers, rounds=2, steps=3, warmup=1,
                                       on_round=lambda r, s: rounds_seen.append((r, {k: len(v) for k, v in s.items()})))
    assert {k: len(v) for k, v in seconds.items()} == {"oat": 2, "pgd-at": 2}
    assert all(x > 0 for v in seconds.values() for x in v)
    assert rounds_seen == [(0, {"oat": 1, "pgd-at": 1}), (1, {"oat": 2, "pgd-at": 2})]
    # one warm-up step each, then per round 3 steps of one trainer, then of the other; the steps
    # continue after the warm-up and wrap around the 2-step epoch, every batch a full one
    names = [n for n, *_ in log]
    assert names == ["oat", "pgd-at"] + ["oat"] * 3 + ["pgd-at"] * 3 + ["oat"] * 3 + ["pgd-at"] * 3
    oat = [(e, i) for n, e, i, _ in log if n == "oat"]
    assert oat == [(0, 0), (0, 1), (0, 0), (0, 1), (1, 0), (1, 1), (1, 0)]
    assert {size for *_, size in log} == {32}


def test_time_steps_takes_more_steps_than_the_epoch_has(tmp_path):
    t = _trainer(tmp_path, "pgd-at")
    log = []
    _record_steps(t, log, "t")
    assert time_steps(t, 3, 1, 4) > 0
    assert [(e, i) for _, e, i, _ in log] == [(3, 1), (3, 0), (3, 1), (3, 0)]


def test_throughput_script_reports_both_pairs(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import train_throughput

    out = tmp_path / "results"
    assert train_throughput.main(["--rounds", "1", "--iters", "1", "--warmup", "0", "--batch-size", "16",
                                  "--threads", "1", "--out-dir", str(out)]) == 0
    doc = json.loads((out / "train_throughput.json").read_text())
    assert [r["pair"] for r in doc["results"]] == ["oat vs pgd-at", "oats vs pgd-ats"]
    assert all(r["cost_ratio"] > 0 and len(r["images_per_s"][m]["rounds"]) == 1
               for r in doc["results"] for m in r["pair"].split(" vs "))


def test_aten_ops_per_step_counts_every_pass_of_the_step(tmp_path):
    """The op counter sees the attack's passes and the training pass: PGD-AT on digits makes
    10 attack passes and 1 training pass, each through the 9 convolutions of resnet_tiny."""
    from oat_edge.training.throughput import aten_ops_per_step

    t = _trainer(tmp_path, "pgd-at")
    convs = sum(1 for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    ops = aten_ops_per_step(t, 0, 1)
    assert t.attack.steps == 10 and convs == 9
    assert ops["aten.convolution"] == (t.attack.steps + 1) * convs
    assert ops["aten.convolution_backward"] == (t.attack.steps + 1) * convs
    assert ops["total"] == sum(v for k, v in ops.items() if k != "total")
