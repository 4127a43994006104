"""Deterministic batching: the shuffle order and every augmentation draw of epoch ``e`` are a
pure function of ``(seed, e)`` — they never read the global RNG — so a run resumed at epoch
``e`` sees exactly the batches an uninterrupted run would. torch is imported on first use.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from oat_edge.errors import ConfigError


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of one epoch: a pure function of (seed, epoch), decorrelated by numpy's
    SeedSequence (no collisions between e.g. (0, 1000) and (1, 0))."""
    if int(seed) < 0 or int(epoch) < 0:
        raise ConfigError(f"seed and epoch must be ≥ 0, got seed={seed}, epoch={epoch}")
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def epoch_batches(
    dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    augment=True,
    drop_last: bool = True,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    device=None,
) -> Iterator[tuple]:
    """Yield the (x, y) batches of one epoch.

    Order and augmentation are drawn from one ``torch.Generator`` seeded with
    ``epoch_seed(seed, epoch)``: first the permutation of the whole dataset, then the
    augmentation parameters of every position of that permutation. So epoch ``e`` is the same
    whatever happened before it (resume-safe) and the same sample gets the same augmentation
    for any ``world_size``/``batch_size``.

    DDP: with ``world_size`` > 1 each rank takes positions ``rank, rank + world_size, ...`` of
    the epoch permutation (disjoint shards). When shuffling, the permutation is first padded
    by wrapping around (or, with ``drop_last``, truncated) to a multiple of ``world_size`` so
    every rank gets the same number of batches, as DistributedSampler does. Without shuffling
    (evaluation) shards are not padded, so no image is counted twice.

    ``augment``: True (the dataset's own augmentation, its spec's ``augment``), False/None,
    or an ``augment.AugmentSpec``. ``drop_last`` drops an incomplete final batch.
    ``start_batch`` skips the first batches (mid-epoch resume) without changing the others.
    """
    import torch

    from oat_edge.training.augment import apply_augment, sample_params

    if batch_size < 1:
        raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 ≤ rank < world_size, got rank={rank}, world_size={world_size}")
    x_all, y_all = dataset.tensors[0], dataset.tensors[1]
    n = x_all.shape[0]
    spec = _augment_spec(dataset, augment, tuple(x_all.shape[-2:]))
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = _epoch_order(n, gen, shuffle, drop_last, world_size)
    params = sample_params(spec, order.shape[0], x_all.shape[-2:], gen) if spec is not None and spec.active else None
    positions = torch.arange(rank, order.shape[0], world_size)
    count = positions.shape[0]
    n_batches = count // batch_size if drop_last else math.ceil(count / batch_size)
    for b in range(start_batch, n_batches):
        pos = positions[b * batch_size : (b + 1) * batch_size]
        idx = order[pos]
        x, y = x_all[idx], y_all[idx]
        if params is not None:
            x = apply_augment(x, {k: v[pos] for k, v in params.items()}, spec)
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y


def _augment_spec(dataset, augment, image_hw):
    """The AugmentSpec ``augment`` asks for (True: the dataset's own, from its spec), or None."""
    from oat_edge.training.augment import AugmentSpec
    from oat_edge.training.datasets.registry import find_spec

    if isinstance(augment, AugmentSpec):
        return augment
    if augment is not True:
        return None
    spec = find_spec(getattr(dataset, "name", None))
    return spec.augment(image_hw) if spec is not None else None


def _epoch_order(n: int, gen, shuffle: bool, drop_last: bool, world_size: int):
    """The epoch's order of the n images: a permutation (shuffled, sized to a multiple of
    world_size) or the dataset order."""
    import torch

    if not shuffle:
        return torch.arange(n)
    order = torch.randperm(n, generator=gen)
    if world_size > 1:
        if drop_last:
            order = order[: (n // world_size) * world_size]
        else:
            total = math.ceil(n / world_size) * world_size
            order = torch.cat([order, order[: total - n]]) if total > n else order
    return order


class EpochLoader:
    """A re-iterable loader over ``epoch_batches``: ``set_epoch(e)`` then iterate (the
    DataLoader + DistributedSampler pattern, without worker processes: batches are gathered
    and augmented as whole-tensor ops)."""

    def __init__(self, dataset, batch_size, train, seed=0, augment=None, drop_last=None, rank=0, world_size=1, device=None):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.augment = self.train if augment is None else augment
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = device
        self.epoch = 0
        self.start_batch = 0
        epoch_seed(self.seed, 0)  # validates the seed
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train and self.world_size > 1:
            n = (n // self.world_size) * self.world_size if self.drop_last else math.ceil(n / self.world_size) * self.world_size
        count = len(range(self.rank, n, self.world_size))
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def __iter__(self):
        return epoch_batches(
            self.dataset, self.batch_size, self.seed, self.epoch, augment=self.augment,
            drop_last=self.drop_last, shuffle=self.train, rank=self.rank, world_size=self.world_size,
            start_batch=self.start_batch, device=self.device,
        )


def make_loader(dataset, batch_size: int, train: bool, seed: int = 0, augment=None, drop_last=None,
                rank: int = 0, world_size: int = 1, device=None) -> EpochLoader:
    """A deterministic loader. ``train=True``: shuffled, the dataset's augmentation, drop_last
    (the reference's training loader); ``train=False``: dataset order, no augmentation, every
    image once. Call ``loader.set_epoch(e)`` before iterating epoch ``e``."""
    return EpochLoader(dataset, batch_size, train, seed, augment, drop_last, rank, world_size, device)
