"""What a dataset is (:class:`ImageDataset`) and the one way to open one (:func:`open_dataset`).

Every format module (:mod:`~alexnet.data.folder`, :mod:`~alexnet.data.prepared`) provides
datasets of this shape; this module picks the format and none of them imports it back.
It also decides, in :func:`resolve_data`, what "no dataset given" means: the embedded one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from torch import Tensor

from alexnet.data.folder import FolderDataset, open_folder
from alexnet.data.prepared import INDEX_FILE, PreparedDataset, read_index, record_stats
from alexnet.data.stats import STATS_FILE, DatasetStats, load_stats_file, save_stats_file
from alexnet.errors import DatasetError


@runtime_checkable
class ImageDataset(Protocol):
    """A labelled image dataset as the rest of the project sees it.

    Items are ``(uint8 [3, S, S], label)`` with ``S = image_size``; ``classes`` are ids in
    label order (synsets or folder names) and ``class_names`` their readable names;
    ``stats`` are the training split's :class:`DatasetStats`; ``bad_files`` lists
    ``(path, reason)`` of every source file left out; ``path_of(i)`` names item ``i``'s file.
    """

    classes: Sequence[str]
    class_names: Sequence[str]
    image_size: int
    bad_files: list[tuple[str, str]]

    @property
    def stats(self) -> DatasetStats: ...

    def path_of(self, i: int) -> str: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[Tensor, int]: ...


def open_dataset(
    path: str | os.PathLike,
    split: str | None = "train",
    *,
    image_size: int | None = None,
    validate: str = "header",
    ground_truth: str | os.PathLike | None = None,
) -> ImageDataset:
    """Open a prepared dataset, an ImageNet folder (``train/``, ``val/``), the official ILSVRC
    validation folder, or a plain class-folder directory, as an :class:`ImageDataset`.

    ``split=None`` opens ``path`` itself; a plain class-folder directory has only ``"train"``.
    ``image_size``, ``validate`` and ``ground_truth`` apply to folder datasets (a prepared
    one has its size fixed and was validated when prepared).
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"dataset not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"not a dataset directory: {root}")
    if (root / INDEX_FILE).is_file():
        return PreparedDataset(root, split or "train")
    return open_folder(root, split, image_size=image_size, validate=validate, ground_truth=ground_truth)


def resolve_data(path: str | os.PathLike | None, *, create: bool = True, progress: bool = False) -> Path | None:
    """The dataset a command works on: ``path`` itself, or, when none is given, the embedded
    dataset (generated first if ``create``; else ``None`` when it has not been generated).

    This is the one place that decides what "no data given" means.
    """
    if path is not None:
        return Path(path)
    from alexnet.data import synth  # generation code: only when it is the default

    if create:
        return synth.ensure_embedded_dataset(progress=progress)
    default = synth.embedded_dataset_path()
    return default if synth.is_complete(default) else None


def store_stats(path: str | os.PathLike, split: str = "train", max_images: int | None = None) -> DatasetStats:
    """Compute the mean image and RGB PCA of ``split`` (``max_images`` evenly spaced images,
    all by default) and store them as ``DIR/stats.safetensors``, where prepared and folder
    datasets alike find them."""
    root = Path(path)
    ds = open_dataset(root, split)
    stats = ds.compute_stats(max_images)  # type: ignore[attr-defined]
    save_stats_file(stats, root / STATS_FILE)
    if (root / INDEX_FILE).is_file():
        record_stats(root)
    return stats


@dataclass
class SplitInfo:
    """One split as ``alexnet data info`` shows it."""

    name: str | None
    dataset: ImageDataset
    per_class: list[int]
    shards: int = 0  # prepared datasets
    megabytes: float = 0.0
    verified: str = ""  # what --verify checked, e.g. "checksums OK" or "every file decoded"
    size_note: str = ""  # how S was decided for a folder dataset, e.g. "S=32: the most common ..."


@dataclass
class DatasetInfo:
    """What a dataset directory holds: its kind, splits, and stored statistics (if any)."""

    root: Path
    kind: str  # "prepared" or "folder"
    encoding: str | None
    splits: list[SplitInfo] = field(default_factory=list)
    stats: DatasetStats | None = None

    @property
    def stats_path(self) -> Path:
        return self.root / STATS_FILE


def describe_dataset(path: str | os.PathLike, verify: bool = False, progress: bool = False) -> DatasetInfo:
    """Open every split of the dataset at ``path`` and collect counts, classes and stored
    statistics. ``verify`` checks the checksum of every file of a prepared dataset (shards,
    index arrays, statistics, the index itself; an older index without some checksums says
    which files it could not check), and decodes every file of a folder dataset (listing
    the unreadable ones in its ``bad_files``)."""
    root = Path(path)
    if (root / INDEX_FILE).is_file():
        index = read_index(root)
        info = DatasetInfo(root, "prepared", f"{index['encoding']} {index['image_size']}x{index['image_size']}")
        names: list[str | None] = list(index["splits"])
    else:
        info = DatasetInfo(root, "folder", None)
        names = [s for s in ("train", "val", "test") if (root / s).is_dir()] or [None]
    for name in names:
        ds = open_dataset(root, name)
        verified = ""
        if verify and isinstance(ds, FolderDataset):
            found = ds.verify(progress)
            verified = f"every file decoded ({found} unreadable)" if found else "every file decodes"
        counts = np.bincount(np.asarray(ds.targets, dtype=np.int64), minlength=len(ds.classes))  # type: ignore[attr-defined]
        split = SplitInfo(name, ds, counts.tolist(), verified=verified, size_note=getattr(ds, "size_note", ""))
        if isinstance(ds, PreparedDataset):
            split.shards = len(ds.shards)
            split.megabytes = sum(sh["bytes"] for sh in ds.shards) / 2**20
            if verify:
                unchecked = ds.verify(progress)
                split.verified = (
                    f"checksums OK, except {', '.join(unchecked)}: no checksum recorded (prepared by an older "
                    "version; prepare again to check them)"
                    if unchecked
                    else "checksums OK (every file)"
                )
        info.splits.append(split)
    if info.stats_path.is_file():
        info.stats = load_stats_file(info.stats_path)
    return info
