"""Deterministic data order for training and sharding for evaluation.

Training order is a function of `(seed, epoch)` only: `DistributedSampler` permutes the data
set with `seed + epoch` and deals it to the ranks (`indices[rank::world]` of the padded
permutation). Every sample also gets its own RNG seed from `(seed, epoch, global position)`, and
`__getitem__` runs with the global RNGs (torch CPU, numpy, random) seeded from it: a random
augmentation draws the same values whichever worker loads the sample, however many workers
there are and wherever in the epoch a run resumed. A resume skips the consumed indices of the
epoch instead of iterating through them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["TrainStream", "derive_seed", "eval_shard", "move_to_device"]


def derive_seed(*words: int) -> int:
    """A 64-bit seed from non-negative ints, e.g. `(seed, epoch, global position)`."""
    state = np.random.SeedSequence(list(words)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


@contextmanager
def _seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, numpy and random; restore their states afterwards."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class _SeededSamples(Dataset):
    """`dataset[index]` under the global RNGs seeded for that sample; keys are `(index, seed)`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with _seeded_rng(seed):
            return self.dataset[index]


class TrainStream:
    """Endless micro-batches of a training set, epoch after epoch, in a fixed order.

    Attributes:
        epoch: The epoch the next batch comes from.
        position: How many batches of `epoch` this rank has consumed.
        batches_per_epoch: Full batches per epoch and rank (the incomplete last one is dropped).
    """

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable[[Sequence[Any]], Any],
        *,
        seed: int,
        batch_size: int,
        num_workers: int,
        rank: int,
        world_size: int,
        epoch: int = 0,
        position: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.collate = collate
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"train_data has {len(dataset)} samples ({len(self.sampler)} per process), "  # type: ignore[arg-type]
                f"fewer than batch_size={batch_size}: no full batch to train on"
            )
        self.epoch = epoch
        self.position = position
        self._it: Iterator[Any] | None = None

    def _start_epoch(self) -> None:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        self.sampler.set_epoch(self.epoch)
        indices = list(self.sampler)
        keys = [
            (index, derive_seed(self.seed, self.epoch, self.rank + i * self.world_size))
            for i, index in enumerate(indices)
        ]
        bs = self.batch_size
        batches = [
            keys[b * bs : (b + 1) * bs] for b in range(self.position, self.batches_per_epoch)
        ]
        loader = DataLoader(
            _SeededSamples(self.dataset),
            batch_sampler=batches,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # worker base seeds from (seed, epoch), and no draw from the global RNG
            generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)),
        )
        self._it = iter(loader)

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._start_epoch()
        assert self._it is not None
        try:
            batch = next(self._it)
        except StopIteration:
            self.position = self.batches_per_epoch
            self._start_epoch()
            batch = next(self._it)
        self.position += 1
        return batch

    def close(self) -> None:
        """Stop the loader's workers."""
        self._it = None


def eval_shard(num_samples: int, rank: int, world_size: int) -> list[int]:
    """This rank's evaluation samples: `range(N)[rank::world]`, no padding, no duplicates."""
    return list(range(rank, num_samples, world_size))


def move_to_device(obj: Any, device: torch.device) -> Any:
    """`obj` with every tensor on `device`: tensors, objects with `.to`, dataclasses, containers."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, nn.Module):
        return obj
    to = getattr(obj, "to", None)
    if callable(to) and not isinstance(obj, type):
        return to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: move_to_device(getattr(obj, f.name), device)
            for f in dataclasses.fields(obj)
            if f.init
        }
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(v, device) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj
