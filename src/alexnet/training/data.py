"""The training engine's view of the data: splits, held-out validation, and epoch batches.

A thin adapter over :mod:`alexnet.data` (``open_dataset``, ``make_loader``) that adds what
the loop needs: a validation split held out of ``train`` when a dataset has none (CIFAR-10
folders ship without one), and the batches of one epoch starting at a given batch, so that
a resumed run sees exactly the batches the interrupted one had left.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


class HeldOut(Dataset):
    """A subset of a dataset that keeps its attributes (classes, stats, image size, paths)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)
        self.classes, self.class_names = base.classes, base.class_names
        self.image_size = base.image_size

    @property
    def stats(self) -> Any:
        return self.base.stats

    @property
    def bad_files(self) -> list:
        return getattr(self.base, "bad_files", [])

    @property
    def targets(self) -> list[int]:
        targets = self.base.targets
        return [int(targets[i]) for i in self.indices]

    def path_of(self, i: int) -> str:
        return self.base.path_of(self.indices[i])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.base[self.indices[i]]


def _labels(ds: Any) -> list[int] | None:
    try:
        return [int(y) for y in ds.targets]
    except (AttributeError, TypeError, NotImplementedError):
        return None


def hold_out(ds: Any, fraction: float) -> tuple[HeldOut, HeldOut]:
    """(train, val): the last ``fraction`` of each class's items (in index order) for validation.

    Deterministic and stratified, so every class is validated and reruns agree. Falls back to
    the last ``fraction`` of all items when the dataset cannot list its labels cheaply.
    """
    n = len(ds)
    labels = _labels(ds)
    if labels is None:
        k = max(1, round(n * fraction))
        return HeldOut(ds, range(n - k)), HeldOut(ds, range(n - k, n))
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    val: list[int] = []
    for items in by_class.values():
        k = min(len(items) - 1, max(1, math.ceil(len(items) * fraction))) if len(items) > 1 else 0
        val.extend(items[len(items) - k :])
    val_set = set(val)
    return HeldOut(ds, [i for i in range(n) if i not in val_set]), HeldOut(ds, sorted(val))


def _same_data(a: Any, b: Any) -> bool:
    """True when two opened splits are the same files (a plain class-folder directory opens
    the same images for any split name)."""
    if len(a) != len(b) or len(a) == 0:
        return False
    try:
        return a.path_of(0) == b.path_of(0) and a.path_of(len(a) - 1) == b.path_of(len(b) - 1)
    except (AttributeError, IndexError):
        return a is b


def open_splits(path: str | Path, val_split: str, val_fraction: float) -> tuple[Any, Any, bool]:
    """(train, val, held_out) for a dataset path; ``held_out``: val was carved out of train."""
    from alexnet.data.folder import DatasetError, open_dataset

    train = open_dataset(path, "train")
    try:
        val = open_dataset(path, val_split)
    except (DatasetError, FileNotFoundError, KeyError):
        val = None
    if val is None or len(val) == 0 or _same_data(train, val):
        train, val = hold_out(train, val_fraction)
        return train, val, True
    if list(val.classes) != list(train.classes):
        raise ValueError(f"{path}: the {val_split!r} split's classes differ from the training split's")
    return train, val, False


# --------------------------------------------------------------------------- epoch batches


class EpochBatches(Iterable[tuple[Tensor, Tensor]]):
    """The batches of one epoch for one process, from batch ``start`` on.

    The order is a function of (seed, epoch) only, and each process takes every
    ``world_size``-th index of it (DistributedSampler's rule), so one process with a global
    batch of B x N sees exactly the union of what N processes with batch B see, step by step.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool,
        start: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.loader = _make_loader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            drop_last=drop_last,
            start_batch=start,
            pin_memory=pin_memory,
        )
        self.start = start
        self.total = len(self.loader) + start  # batches in the whole epoch

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # Creating a DataLoader iterator draws a seed from the global RNG; fork it so that the
        # RNG stream the model sees (dropout) does not depend on where an epoch was resumed.
        with torch.random.fork_rng(devices=[]):
            it = iter(self.loader)
        yield from it


def _make_loader(
    dataset: Any,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    num_workers: int,
    drop_last: bool,
    start_batch: int,
    pin_memory: bool,
) -> Any:
    n = len(dataset)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    else:
        order = list(range(n))
    if world_size > 1:  # pad so every process gets the same number of items
        order += order[: (-n) % world_size]
    idx = order[rank::world_size]
    batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches[start_batch:], num_workers=num_workers, pin_memory=pin_memory
    )
