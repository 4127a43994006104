"""Device and process set-up of a training run, and multi-process data-parallel training
(``torchrun --nproc-per-node N -m oat_edge.cli train``).

Why DistributedDataParallel and not DataParallel: the reference OAT code wraps the model in
``nn.DataParallel``, which scatters a batch across GPUs but passes every replica the same
"first k samples are λ = 0" index, so replicas after the first route the wrong samples to BN_c.
Here each rank runs a complete training step on its own shard, and the per-sample λ travels
with the samples (a tensor the model routes on), so routing is local and correct on every rank;
only gradients cross processes.

Choices:
- ``find_unused_parameters=True``: in one forward, BN_c of a width gets no input when the
  rank's batch has no λ = 0 sample, and the BNs/FiLM generators of the other widths are never
  touched; DDP must know so it does not wait for their gradients.
- No SyncBatchNorm: the dual BN calls BN_c / BN_a on data-dependent subsets of the batch, so two
  ranks may call a different number of BN layers in a step and a synchronising BN would hang.
  Statistics are per rank (per-rank batch = global batch / world size, like per-GPU BN in the
  paper's setup); running statistics are averaged across ranks at the end of every epoch so the
  checkpoint reflects all shards. ``broadcast_buffers=False`` for the same reason (rank 0's
  buffers would otherwise overwrite what the other ranks' routed samples contributed).
- Gradients are averaged by DDP on every backward; OATS calls backward once per width, so the
  optimizer sees the average over ranks of the sum over widths, as on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from oat_edge.errors import ConfigError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    in_group: bool = False  # a process group is in use (torchrun, even with one process)

    @property
    def enabled(self) -> bool:
        return self.in_group or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (torch.distributed.run), which sets
    TORCHELASTIC_RUN_ID besides RANK / WORLD_SIZE / MASTER_ADDR for every worker."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_ADDR" in os.environ


def init_distributed(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment: with WORLD_SIZE > 1, and
    also with one process under torchrun (``--nproc-per-node 1`` then runs the same DDP code
    as a larger job, which is how the nccl path is checked on a single GPU). A plain single
    process joins nothing. gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not launched_by_torchrun():
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, False, True)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, True, True)


def wrap_ddp(module: torch.nn.Module, ctx: DistContext, device: torch.device):
    """``module`` wrapped for data-parallel training (see the module docstring for the flags)."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False
    )


@torch.no_grad()
def average_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (BN running statistics) over ranks; identical buffers
    (the λ-code matrix, the Normalize constants) are unchanged by an average."""
    if not ctx.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(ctx.world_size)


def all_reduce_sum(values, ctx: DistContext, device: Optional[torch.device] = None):
    """Element-wise sum over ranks of a list of numbers (for epoch statistics). ``device``:
    where the reduction runs — nccl reduces CUDA tensors only, so pass the training device."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def pick_device(name: str) -> torch.device:
    """The training device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:i``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available to this torch build")
    return torch.device(name)


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Under torchrun each CUDA rank trains on the GPU of its local rank."""
    return torch.device("cuda", ctx.local_rank) if ctx.enabled and device.type == "cuda" else device


def set_threads(threads: Optional[int], ctx: DistContext, device: torch.device) -> None:
    """torch's intra-op threads: the given number, or with several CPU ranks on one machine a
    share of the cores each (instead of oversubscribing them)."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif ctx.enabled and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))


def per_rank_batch(batch_size: int, ctx: DistContext) -> int:
    """This rank's share of the global batch (which must divide evenly over the ranks)."""
    if batch_size % ctx.world_size:
        raise ConfigError(
            f"batch size {batch_size} is the global batch; it must divide evenly over "
            f"{ctx.world_size} processes"
        )
    return batch_size // ctx.world_size


def steps_per_epoch(images: int, batch: int, ctx: DistContext) -> int:
    """Full batches of ``batch`` per rank when ``images`` are dealt round-robin over the ranks."""
    per_rank = len(range(ctx.rank, (images // ctx.world_size) * ctx.world_size, ctx.world_size))
    return per_rank // batch
