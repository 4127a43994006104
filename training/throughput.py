"""Training speed of several trainers measured side by side: optimizer steps in interleaved
rounds (A, B, A, B, ...), so drift of a shared machine hits every trainer alike. The training
throughput script, the GPU check and the reproduction suite's timing all measure with this."""

from __future__ import annotations

import time
from itertools import islice
from typing import Callable, Dict, List, Mapping, Optional


def time_steps(trainer, epoch: int, first_step: int, steps: int) -> float:
    """Wall seconds of ``steps`` optimizer steps of ``trainer`` from ``first_step`` of ``epoch``
    (batches cycle through the epoch). The batches are drawn before the clock starts, so the
    figure is the step itself; a CUDA device is synchronised at both ends."""
    import torch

    per_epoch = trainer.steps_per_epoch
    batches: list = []
    while len(batches) < steps:  # one pass over the epoch's batches per wrap-around
        start = (first_step + len(batches)) % per_epoch
        batches += list(islice(trainer.batches(epoch, start=start), min(per_epoch - start, steps - len(batches))))
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        trainer.train_step(epoch, (first_step + i) % per_epoch, x, y)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_step_seconds(trainers: Mapping[str, object], rounds: int, steps: int, warmup: int = 0,
                             on_round: Optional[Callable[[int, Dict[str, List[float]]], None]] = None
                             ) -> Dict[str, List[float]]:
    """{name: [seconds of ``steps`` steps, one per round]}: ``warmup`` untimed steps per trainer,
    then ``rounds`` rounds in which every trainer runs ``steps`` steps in turn. Round r draws its
    batches from epoch r, continuing after the warm-up steps. ``on_round(r, seconds)`` is called
    after each round (progress)."""
    if warmup:
        for t in trainers.values():
            time_steps(t, 0, 0, warmup)
    seconds: Dict[str, List[float]] = {name: [] for name in trainers}
    for r in range(rounds):
        for name, t in trainers.items():
            seconds[name].append(time_steps(t, r, warmup + r * steps, steps))
        if on_round is not None:
            on_round(r, seconds)
    return seconds


def aten_ops_per_step(trainer, epoch: int, step: int) -> Dict[str, int]:
    """{"total": n, op name: count, ...}: the aten operators one optimizer step dispatches
    (forward, backward and update; each is one kernel launch or more on a GPU). Counted with a
    dispatch mode, so nothing that runs below the Python dispatcher is missed or doubled."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    x, y = next(iter(trainer.batches(epoch, start=step)))
    with _Count() as counter:
        trainer.train_step(epoch, step, x, y)
    return {"total": sum(counter.ops.values()), **dict(counter.ops.most_common())}
