"""Training and validation splits: a validation split held out of ``train`` when a dataset
has none (CIFAR-10 folders ship without one), and subsets that keep their dataset's attributes.

Training, the report and the explorer all split a run's data the same way through
:func:`open_splits`, so "the validation images" mean the same images everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from alexnet.data.dataset import open_dataset
from alexnet.errors import DatasetError


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

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """A whole batch through the base dataset's fast path when it has one."""
        mapped = [self.indices[i] for i in indices]
        if hasattr(self.base, "get_batch"):
            return self.base.get_batch(mapped)
        items = [self.base[i] for i in mapped]
        return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.int64)


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
    train = open_dataset(path, "train")
    try:
        val = open_dataset(path, val_split)
    except (DatasetError, FileNotFoundError, KeyError):
        val = None
    if val is None or len(val) == 0 or _same_data(train, val):
        train, val = hold_out(train, val_fraction)
        return train, val, True
    if list(val.classes) != list(train.classes):
        raise DatasetError(f"{path}: the {val_split!r} split's classes differ from the training split's")
    return train, val, False
