"""Distributed data-parallel training on the CPU: 2 gloo processes, a tiny model.

- ranks end with identical weights and BN statistics, and only rank 0 writes the checkpoint;
- per-sample dual-BN routing is right inside DDP: after one step, BN_c of every width on every
  rank holds the statistics of exactly that rank's λ = 0 samples (with BN momentum 1 the
  running mean is the mean of the last batch a BN saw). The reference's DataParallel defect —
  replicas routing by a batch index that is only valid on the first GPU — would fail this;
- the real launcher: ``torchrun -m oat_edge.cli train`` writes one loadable checkpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp

from oat_edge.checkpoint import load_checkpoint

# Each test starts 2 processes (~4-6 s on a quiet 2-core VM, up to ~30 s when it is busy).
TINY = {"channels": [8, 16, 32]}
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(out, **kw):
    from oat_edge.training.config import TrainConfig

    base = dict(dataset="digits", method="oats", arch_kwargs=dict(TINY), epochs=1, batch_size=32,
                max_train_images=192, progress=False, threads=1, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def _join(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))


def _train_worker(rank: int, port: int, out_dir: str) -> None:
    from oat_edge.training.trainers import Trainer

    _join(rank, port)
    trainer = Trainer(_config(os.path.join(out_dir, "ckpt.pt")))
    try:
        trainer.fit()
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        torch.save({"state": state, "steps": trainer.steps_per_epoch, "batch": trainer.per_rank_batch},
                   os.path.join(out_dir, f"rank{rank}.state"))
    finally:
        trainer.ctx.close()


def _routing_worker(rank: int, port: int, out_dir: str) -> None:
    from oat_edge.training.trainers import Trainer

    _join(rank, port)
    trainer = Trainer(_config(os.path.join(out_dir, "unused.pt")))
    try:
        model = trainer.model
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        x, y = next(iter(trainer.batches(0)))
        lam = trainer.step_lambdas(0, 0)
        with torch.no_grad():
            stem = model.stem_conv(model.normalize(x))  # full width; width w = first channels
        trainer.train_step(0, 0, x, y)
        bn_c = [model.stem_norm.bn.bn_c[i].running_mean.clone() for i in range(len(model.widths))]
        torch.save({"lam": lam, "stem": stem, "bn_c": bn_c, "y": y}, os.path.join(out_dir, f"rank{rank}.routing"))
    finally:
        trainer.ctx.close()


def test_ddp_ranks_end_identical_and_only_rank0_writes(tmp_path):
    mp.spawn(_train_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0 = torch.load(tmp_path / "rank0.state", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.state", weights_only=True)
    assert r0["batch"] == 16 and r0["steps"] == 192 // 32  # global batch split evenly; same step count
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # gradients averaged, buffers averaged
    ck = load_checkpoint(tmp_path / "ckpt.pt")
    assert ck["world_size"] == 2 and ck["epoch"] == 1
    for k in r0["state"]:
        assert torch.equal(ck["model"][k], r0["state"][k]), k
    # rank 0 alone wrote: one checkpoint, no stray temp files from a second writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "rank0.state", "rank1.state"]


def test_ddp_routes_each_ranks_samples_to_their_own_bn(tmp_path):
    mp.spawn(_routing_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.routing", weights_only=True) for r in range(WORLD)]
    expected = []
    for r in ranks:
        lam, stem = r["lam"], r["stem"]
        clean = lam == 0
        assert clean.any() and not clean.all(), "the seed must give each rank a mixed batch"
        expected.append(stem[clean].mean(dim=(0, 2, 3)))
        for i, running in enumerate(r["bn_c"]):
            c = running.shape[0]
            torch.testing.assert_close(running, expected[-1][:c], rtol=1e-4, atol=1e-5)
            # not the mean of the whole local batch, nor of the other rank's samples
            assert not torch.allclose(running, stem.mean(dim=(0, 2, 3))[:c], atol=1e-3)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # a mixed-up route would show
    assert not torch.equal(ranks[0]["y"], ranks[1]["y"])  # disjoint shards


def test_torchrun_cli_trains_and_writes_one_checkpoint(tmp_path):
    out = tmp_path / "ckpt.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
        "-m", "oat_edge.cli", "train", "--dataset", "digits", "--method", "oats", "--arch-kwargs",
        '{"channels": [8, 16, 32]}', "--epochs", "1", "--batch-size", "32", "--max-train-images", "128",
        "--threads", "1", "--no-progress", "--out", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint:") == 1  # only rank 0 reports
    ck = load_checkpoint(out)
    assert ck["world_size"] == 2 and ck["method"] == "oats" and ck["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
