"""Folder datasets: ImageNet layout, plain class folders, the official ILSVRC validation set.

Layouts recognised by :func:`open_folder` (through :func:`alexnet.data.open_dataset`):

* ImageNet layout: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (classes are the
  sorted sub-folder names of ``train/``, so a synset folder gets its standard index);
* the official ILSVRC validation layout: ``ROOT/val/*.JPEG`` flat, with either
  ``LOC_val_solution.csv`` (Kaggle / ILSVRC 2015 format) or the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` (1-based ILSVRC ids, one line per image in
  file-name order) plus the id-to-synset table (``map_clsloc.txt``, or the 2012
  devkit's ``meta.mat``, read with scipy: ``pip install 'alexnet[imagenet]'``) somewhere
  under ``ROOT``;
* a plain class-folder directory ``ROOT/<class>/*``: its only split, ``"train"`` (or ``None``).

Links. Class folders are walked recursively and directory links are followed, but never
back into a directory already walked (``ln -s . loop``), to the dataset root or above, to
an ancestor of the class folder, or into another class folder, so every walk ends. Each
real file (device and inode) is counted once, at its home: the path through no link, else
the first class in sorted order; every other path to it is listed in ``.bad_files`` as
``duplicate`` (see :func:`class_files`). So a file is never seen twice an epoch, nor under two labels.

Bad files. Every item is ``(uint8 [3, S, S], label)``. At index time each file's header
is probed (cheap: no pixel decode), which catches empty files, non-images and
decompression bombs; they are left out and listed in ``.bad_files``. Damage that only
shows when decoding (truncated or corrupt pixel data) is found in ``__getitem__``: the
file is recorded in ``.bad_files`` and the next good item is returned *with its own label*,
so a bad file can cost a duplicate but never a wrong label. The search for that item spans
the whole dataset (any number of bad files in a row), bad files are remembered so later
epochs do not decode them again, ``.substituted_items`` says how many items each epoch
replaces, and a class left with no readable image stops with a :class:`DatasetError`
naming it. :meth:`FolderDataset.load` never substitutes (evaluation uses it). In a DataLoader worker the
record is made in the worker's copy; the loader of :mod:`alexnet.data.loader` carries it
back to the dataset in the main process with the batch. ``validate="full"`` decodes
everything up front instead, and ``alexnet data prepare`` does that once for good.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from alexnet.data.decode import DecodeError, image_paths, is_image_file, load_resized, probe_image
from alexnet.data.imagenet import IMAGENET_SYNSETS, readable_name
from alexnet.data.sampling import spaced_indices
from alexnet.data.stats import STATS_FILE, DatasetStats, load_stats_file, sample_stats
from alexnet.errors import DatasetError

log = logging.getLogger(__name__)
CLASS_NAMES_FILE = "class_names.json"  # optional {class folder: readable name} beside the splits
STATS_SAMPLE = 500  # images used to estimate statistics of a raw folder without stored ones
SMALL_IMAGE = 64  # datasets whose images are mostly at most this side keep their native size
SIZE_PROBE = 64  # image headers read to decide the stored side


def class_folders(root: Path) -> list[str]:
    """Sorted names of the non-hidden sub-directories of ``root`` (links to directories included)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _within(path: str, parent: str) -> bool:
    """Whether real path ``path`` is ``parent`` or lies under it."""
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _scan(folder: Path, *, root: str | None = None, others: Sequence[str] = ()) -> list[tuple[str, tuple, bool]]:
    """Image files under a class folder, recursively, directory links followed:
    ``(path, identity, via_link)`` with identity ``(device, inode)`` and ``via_link`` true
    when the path goes through a link (the file's real home is elsewhere).

    A directory link is *not* followed when it leads back to a directory already walked
    (``ln -s . loop``), to the dataset ``root`` or above it, or to an ancestor of the class
    folder (``ln -s .. up``: it would walk the other classes), or into one of the ``others``
    class folders (real paths); these are skipped and logged. So the walk visits each real
    directory at most once and always ends.
    """
    real_top = os.path.realpath(folder)
    stops = [os.path.realpath(root)] if root is not None else []
    if any(_within(stop, real_top) for stop in stops):
        log.warning("%s: not walked: it is a link to the dataset root or above it", folder)
        return []
    visited = {real_top}
    found: list[tuple[str, tuple, bool]] = []
    pending = [(str(folder), real_top, folder.is_symlink())]
    while pending:
        path, real, via = pending.pop()
        try:
            entries = list(os.scandir(path))
            dev = os.stat(path).st_dev
        except OSError as exc:
            log.warning("%s: cannot be listed (%s)", path, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                link = entry.is_symlink()
            except OSError:
                is_dir, link = False, True
            if is_dir:
                sub_real = os.path.realpath(entry.path) if link else os.path.join(real, entry.name)
                if sub_real in visited:
                    if link:
                        log.info("%s: not followed: leads back to %s, already walked", entry.path, sub_real)
                    continue
                if link and (
                    any(_within(stop, sub_real) for stop in stops)
                    or _within(real_top, sub_real)
                    or any(_within(sub_real, o) for o in others)
                ):
                    log.info(
                        "%s: not followed: leads to %s (the dataset root, an ancestor or another class)",
                        entry.path, sub_real,
                    )
                    continue
                visited.add(sub_real)
                pending.append((entry.path, sub_real, via or link))
            elif is_image_file(entry.name):
                try:  # a plain file's inode comes with the listing; a link's needs a stat
                    key: tuple = _identity(entry) if link else (dev, entry.inode())
                except OSError:  # a dangling link: kept, so that the header probe reports it
                    key = ("path", entry.path)
                found.append((entry.path, key, via or link))
    return found


def class_files(root: Path, folders: Sequence[str]) -> tuple[dict[str, list[Path]], list[tuple[str, str]]]:
    """The image files of each class folder ``root/<folder>``, each real file counted once,
    and the ``(path, "duplicate")`` of every other path to a file already counted.

    Links make one file reachable by several paths: ``ln -s . loop`` in a class folder,
    a file link, a hard link, a link from one class folder into another. A file (device
    and inode) is counted once, at its *home*: the path that goes through no link, else
    the first class in sorted order (then the first path); every other path to it is
    listed as a duplicate, never counted, so no image is seen twice per epoch nor under
    two labels. See :func:`_scan` for which directory links are followed.
    """
    real = {c: os.path.realpath(root / c) for c in folders}
    candidates = []  # (via_link, class position, path, key)
    for pos, c in enumerate(folders):
        others = [r for k, r in real.items() if k != c]
        candidates += [(via, pos, Path(p), key) for p, key, via in _scan(root / c, root=str(root), others=others)]
    home: dict[tuple, tuple] = {}
    for cand in candidates:
        key = cand[3]
        if key not in home or cand[:3] < home[key][:3]:
            home[key] = cand
    files: dict[str, list[Path]] = {c: [] for c in folders}
    duplicates = []
    for cand in candidates:
        if home[cand[3]] is cand:
            files[folders[cand[1]]].append(cand[2])
        else:
            duplicates.append((str(cand[2]), "duplicate"))
    for c in folders:
        files[c].sort()
    duplicates.sort(key=lambda d: Path(d[0]))
    return files, duplicates


def _identity(entry: os.DirEntry) -> tuple[int, int]:
    st = entry.stat()
    return st.st_dev, st.st_ino


def _load_class_names(roots: Sequence[Path], classes: Sequence[str]) -> list[str]:
    names: dict[str, str] = {}
    for root in roots:
        f = root / CLASS_NAMES_FILE
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    names.update({str(k): str(v) for k, v in data.items()})
            except (OSError, ValueError) as exc:
                warnings.warn(f"ignoring unreadable {f}: {exc}", stacklevel=2)
            break
    return [names.get(c, readable_name(c)) for c in classes]


def decide_image_size(paths: Sequence[Path], default: int = 256, probe: int = SIZE_PROBE) -> tuple[int, str]:
    """The stored side ``S`` for these images, and a sentence saying how it was decided.

    The shorter side of up to ``probe`` evenly spaced images is read from their headers
    (cheap). When most of them are small (at most ``SMALL_IMAGE`` px: CIFAR, 64 px
    ImageNet), ``S`` is their most common shorter side (the median when no side repeats),
    so the dataset keeps its native size; otherwise the paper's ``default`` (256). A
    majority decides, not the extremes: one 16 px icon among CIFAR images must not make
    ``S`` = 16, nor one 500 px photo make the folder ImageNet-sized.
    """
    sides = []
    for i in spaced_indices(len(paths), probe):
        try:
            sides.append(min(probe_image(paths[i])))
        except DecodeError:
            continue
    if not sides:
        return default, f"S={default}: no image header could be read (the default)"
    small = sorted(x for x in sides if x <= SMALL_IMAGE)
    if 2 * len(small) <= len(sides):
        return default, (
            f"S={default}: {len(sides) - len(small)} of {len(sides)} probed images are larger than {SMALL_IMAGE} px"
        )
    counts = Counter(small)
    top = max(counts.values())
    size = max(x for x, k in counts.items() if k == top) if top > 1 else small[(len(small) - 1) // 2]
    odd = len(sides) - counts[size]
    return size, (
        f"S={size}: the {'most common' if top > 1 else 'median'} shorter side of {len(sides)} probed images "
        f"({counts[size]} are {size} px; {odd} of another size are resized to it)"
    )


def infer_image_size(paths: Sequence[Path], default: int = 256, probe: int = SIZE_PROBE) -> int:
    """Native side for small-image datasets (CIFAR: 32), else the paper's 256 (see :func:`decide_image_size`)."""
    return decide_image_size(paths, default, probe)[0]


class FolderDataset(Dataset):
    """A list of ``(file, label)`` decoded on access to the paper's ``S`` x ``S`` patch.

    ``image_size`` None decides ``S`` from the images (:func:`decide_image_size`);
    ``size_note`` says what was decided and why. ``substituted_items`` counts the items
    that ``__getitem__`` replaces by a readable neighbour (see the module notes).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        class_names: Sequence[str] | None = None,
        image_size: int | None = None,
        *,
        root: Path | None = None,
        validate: str = "header",
        bad_files: Sequence[tuple[str, str]] = (),
        stats_fn: Callable[[], DatasetStats] | None = None,
    ) -> None:
        if validate not in ("none", "header", "full"):
            raise ValueError(f"validate must be none|header|full, got {validate!r}")
        self.classes = list(classes)
        self.class_names = list(class_names) if class_names is not None else [readable_name(c) for c in classes]
        self.root = root
        self.bad_files: list[tuple[str, str]] = list(bad_files)
        samples = [(Path(p), int(y)) for p, y in samples]
        if image_size is None:
            image_size, self.size_note = decide_image_size([p for p, _ in samples])
            log.info("%s: %s", root or "dataset", self.size_note)
        else:
            self.size_note = f"S={int(image_size)} (given)"
        self.image_size = int(image_size)
        if validate != "none":
            good = []
            for p, y in samples:
                try:
                    if validate == "full":
                        load_resized(p, self.image_size)
                    else:
                        probe_image(p)
                    good.append((p, y))
                except DecodeError as exc:
                    self.bad_files.append((str(p), exc.reason))
            samples = good
        self.samples = samples
        self._stats: DatasetStats | None = None
        self._stats_fn = stats_fn
        self.substitutions = 0  # items replaced by a neighbour in this process (see __getitem__)
        self._bad_index: set[int] = set()  # indices known not to decode
        self._bad_synced = 0  # how much of bad_files _bad_index reflects
        self._index_of: dict[str, int] | None = None
        self._per_class: dict[int, int] | None = None  # items per label
        self._bad_per_class: dict[int, int] = {}  # known-bad items per label

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def path_of(self, i: int) -> str:
        return str(self.samples[i][0])

    def load(self, i: int) -> tuple[Tensor, int]:
        """Item ``i`` or :class:`DecodeError` (no substitution)."""
        path, label = self.samples[i]
        return load_resized(path, self.image_size), label

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """Item ``i``, or, when its file does not decode, the next readable item *with its
        own label* (a substitution, counted in :attr:`substitutions`).

        The search runs over the whole dataset (any number of bad files in a row), and
        every file found bad is remembered, so later epochs skip it without decoding it
        again. A class left with no readable image is a :class:`DatasetError` naming it:
        training on without it would silently learn a different task.
        """
        n = len(self.samples)
        if not -n <= i < n:
            raise IndexError(f"index {i} outside a dataset of {n} items")
        i %= n
        bad = self._known_bad()
        for k in range(n):
            j = (i + k) % n
            if j in bad:
                continue
            try:
                item = self.load(j)
            except DecodeError as exc:
                self._mark_bad(j, exc)
                continue
            if k:
                self.substitutions += 1
            return item
        raise DatasetError(f"{self.root}: none of the {n} images decodes (all listed in bad_files)")

    def _known_bad(self) -> set[int]:
        """Indices of samples whose file is known not to decode.

        Kept in step with ``bad_files``, which the loader also fills from worker processes,
        so a fresh worker copy starts with everything found so far."""
        if self._bad_synced != len(self.bad_files):
            if self._index_of is None:
                self._index_of = {str(p): j for j, (p, _) in enumerate(self.samples)}
            for path, _ in self.bad_files[self._bad_synced :]:
                j = self._index_of.get(path)
                if j is not None and j not in self._bad_index:
                    self._bad_index.add(j)
                    label = self.samples[j][1]
                    self._bad_per_class[label] = self._bad_per_class.get(label, 0) + 1
            self._bad_synced = len(self.bad_files)
        return self._bad_index

    def _mark_bad(self, j: int, exc: DecodeError) -> None:
        entry = (self.path_of(j), exc.reason)
        if entry not in self.bad_files:
            self.bad_files.append(entry)
            warnings.warn(f"skipping bad image {entry[0]} ({exc})", stacklevel=3)
        self._known_bad()  # takes in the entry (listed now or before)
        label = self.samples[j][1]
        if self._per_class is None:
            self._per_class = {}
            for _, y in self.samples:
                self._per_class[y] = self._per_class.get(y, 0) + 1
        files = self._per_class.get(label, 0)
        if self._bad_per_class.get(label, 0) >= files:
            name = self.classes[label] if 0 <= label < len(self.classes) else str(label)
            raise DatasetError(
                f"class {name!r} has no readable image: all {files} of its files fail to decode "
                f"(e.g. {entry[0]}: {exc.reason}); remove or replace them, or remove the class folder"
            )

    @property
    def substituted_items(self) -> int:
        """Items known unreadable, each replaced by a neighbour whenever it is drawn: the
        number of substitutions per epoch. Computed from ``bad_files``, which the loader
        brings back from worker processes, so it is right whatever ``num_workers`` is
        (unlike :attr:`substitutions`, counted in the process that decoded)."""
        return len(self._known_bad())

    def verify(self, progress: bool = False) -> int:
        """Decode every file (the header probe at opening does not see damaged pixel data);
        unreadable ones are left out and listed in ``bad_files``. Returns how many were found."""
        from tqdm import tqdm

        good, found = [], 0
        for p, y in tqdm(self.samples, desc="verify", unit="img", disable=not progress):
            try:
                load_resized(p, self.image_size)
                good.append((p, y))
            except DecodeError as exc:
                found += 1
                if (str(p), exc.reason) not in self.bad_files:
                    self.bad_files.append((str(p), exc.reason))
        self.samples = good
        self._forget_indices()
        return found

    def _forget_indices(self) -> None:
        """Reset what is keyed by sample index (after ``samples`` changed)."""
        self._bad_index, self._bad_synced, self._index_of = set(), 0, None
        self._per_class, self._bad_per_class = None, {}

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(uint8 [B, 3, S, S], int64 [B])`` for a list of indices."""
        items = [self[i] for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)

    # ------------------------------------------------------------------ statistics
    @property
    def stats(self) -> DatasetStats:
        """Stored statistics (``stats.safetensors`` from ``alexnet data stats``) if present,
        else an estimate from an evenly spaced sample of ``STATS_SAMPLE`` training images
        (computed once), else the ImageNet constants for an empty dataset."""
        if self._stats is None:
            self._stats = self._stats_fn() if self._stats_fn is not None else self.compute_stats(STATS_SAMPLE)
        return self._stats

    @stats.setter
    def stats(self, value: DatasetStats) -> None:
        self._stats = value

    def compute_stats(self, max_images: int | None = None, batch: int = 64) -> DatasetStats:
        return sample_stats(self, max_images, batch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.root}, {len(self)} images, {len(self.classes)} classes, "
            f"S={self.image_size}, {len(self.bad_files)} bad files)"
        )


# ---------------------------------------------------------------------- constructors


def class_folder_dataset(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    validate: str = "header",
    stats_fn: Callable[[], DatasetStats] | None = None,
) -> FolderDataset:
    """``root/<class>/**/*.ext``; labels index ``classes`` (default: the sorted folder names)."""
    root = Path(root)
    found = class_folders(root)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(f"{root} has class folders not in the training classes: {unknown[:5]}")
    index = {c: i for i, c in enumerate(classes)}
    files, duplicates = class_files(root, found)
    samples = [(p, index[c]) for c in found for p in files[c]]
    if not samples:
        raise DatasetError(f"no images found in class folders under {root}")
    if duplicates:
        log.info("%s: %d paths lead to files already counted (links); listed as duplicates", root, len(duplicates))
    names = _load_class_names([root, root.parent], classes)
    return FolderDataset(
        samples, classes, names, image_size, root=root, validate=validate, bad_files=duplicates, stats_fn=stats_fn
    )


GROUND_TRUTH_NAMES = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt")
ID_MAP_NAMES = ("map_clsloc.txt", "meta.mat")


def _find(root: Path, names: Sequence[str], depth: int = 3) -> Path | None:
    for name in names:
        for d in range(depth + 1):
            hits = sorted(root.glob("/".join(["*"] * d + [name])))
            if hits:
                return hits[0]
    return None


def _ilsvrc_id_to_synset(path: Path) -> dict[int, str]:
    """ILSVRC2012 id (1-based, devkit order) -> synset, from map_clsloc.txt or meta.mat."""
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat  # optional: only for the original devkit file
        except ImportError:
            raise DatasetError(
                f"reading {path} needs scipy (pip install 'alexnet[imagenet]'), or put map_clsloc.txt beside it"
            ) from None
        try:  # a MAT file is data (no pickle), but it may be damaged or not the devkit's
            synsets = loadmat(str(path), squeeze_me=True)["synsets"]
            return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
        except Exception as exc:
            raise DatasetError(f"{path} is not the ILSVRC2012 devkit's meta.mat ({type(exc).__name__}: {exc})") from None
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[int(parts[1])] = parts[0]
    return out


def ilsvrc_val_labels(folder: Path, ground_truth: Path, id_map: Path | None = None) -> dict[str, str]:
    """File stem -> synset for the official flat validation folder."""
    if ground_truth.suffix == ".csv":
        labels = {}
        with open(ground_truth, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                pred = (row.get("PredictionString") or "").split()
                if row.get("ImageId") and pred:
                    labels[row["ImageId"]] = pred[0]
        return labels
    if id_map is None:
        raise DatasetError(
            f"{ground_truth} holds ILSVRC ids; the id-to-synset table ({' or '.join(ID_MAP_NAMES)}) was not found"
        )
    id_to_synset = _ilsvrc_id_to_synset(id_map)
    ids = [int(t) for t in ground_truth.read_text(encoding="utf-8").split()]
    files = image_paths(folder)
    if len(ids) != len(files):
        raise DatasetError(f"{ground_truth} has {len(ids)} labels but {folder} has {len(files)} images")
    try:
        return {p.stem: id_to_synset[k] for p, k in zip(files, ids, strict=True)}
    except KeyError as exc:
        raise DatasetError(f"ILSVRC id {exc.args[0]} is not in {id_map}") from None


def ilsvrc_val_dataset(
    folder: str | os.PathLike,
    ground_truth: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    id_map: str | os.PathLike | None = None,
    image_size: int | None = 256,
    validate: str = "header",
    stats_fn: Callable[[], DatasetStats] | None = None,
) -> FolderDataset:
    """The official flat validation folder; labels index ``classes`` (default: the 1000 synsets)."""
    folder = Path(folder)
    classes = list(classes) if classes is not None else list(IMAGENET_SYNSETS)
    index = {c: i for i, c in enumerate(classes)}
    labels = ilsvrc_val_labels(folder, Path(ground_truth), None if id_map is None else Path(id_map))
    samples, bad = [], []
    for p in image_paths(folder):
        synset = labels.get(p.stem)
        if synset is None or synset not in index:
            bad.append((str(p), "no_label" if synset is None else f"unknown_class:{synset}"))
        else:
            samples.append((p, index[synset]))
    if not samples:
        raise DatasetError(f"no labelled images in {folder} (ground truth {ground_truth})")
    names = _load_class_names([folder.parent], classes)
    return FolderDataset(
        samples, classes, names, image_size, root=folder, validate=validate, bad_files=bad, stats_fn=stats_fn
    )


# ---------------------------------------------------------------------- opening a split


def _stored_or_sampled(stats_root: Path, train_fn: Callable[[], FolderDataset | None]) -> Callable[[], DatasetStats]:
    def load() -> DatasetStats:
        f = stats_root / STATS_FILE
        if f.is_file():
            return load_stats_file(f)
        train = train_fn()
        return train.compute_stats(STATS_SAMPLE) if train is not None and len(train) else DatasetStats.imagenet_fallback()

    return load


def _is_class_dir(d: Path) -> bool:
    try:
        return any(p.is_dir() and not p.name.startswith(".") for p in d.iterdir())
    except OSError:
        return False


def open_folder(
    root: Path,
    split: str | None = "train",
    *,
    image_size: int | None = None,
    validate: str = "header",
    ground_truth: str | os.PathLike | None = None,
) -> FolderDataset:
    """One split of a folder dataset under ``root`` (an existing directory): the ImageNet
    layout's ``root/split/<class>/``, the official flat ILSVRC validation folder, or a plain
    class-folder directory (its only split is ``"train"``, or ``None``).

    Statistics come from the training split: stored ones if present, else a sample estimate.
    Use :func:`alexnet.data.open_dataset`, which also recognises prepared datasets.
    """
    split_dir = root / split if split else None
    if split_dir is not None and split_dir.is_dir():
        train_dir = root / "train"
        cache: dict[str, FolderDataset | None] = {}

        def train_fn() -> FolderDataset | None:
            if "train" not in cache:
                cache["train"] = (
                    class_folder_dataset(train_dir, image_size=image_size) if _is_class_dir(train_dir) else None
                )
            return cache["train"]

        stats_fn = _stored_or_sampled(root, train_fn)
        classes = class_folders(train_dir) if split != "train" and _is_class_dir(train_dir) else None
        if _is_class_dir(split_dir):
            ds = class_folder_dataset(split_dir, classes=classes, image_size=image_size, validate=validate, stats_fn=stats_fn)
            if split == "train":
                cache["train"] = ds
            return ds
        gt = Path(ground_truth) if ground_truth else _find(root, GROUND_TRUTH_NAMES)
        if gt is None:
            raise DatasetError(
                f"{split_dir} has no class folders and no ground truth ({' or '.join(GROUND_TRUTH_NAMES)}) under {root}"
            )
        id_map = _find(root, ID_MAP_NAMES) if gt.suffix != ".csv" else None
        return ilsvrc_val_dataset(
            split_dir, gt, classes=classes, id_map=id_map, image_size=image_size or 256, validate=validate, stats_fn=stats_fn
        )

    if split in (None, "train") and _is_class_dir(root) and not (root / "train").is_dir():
        ds = class_folder_dataset(root, image_size=image_size, validate=validate)
        ds._stats_fn = _stored_or_sampled(root, lambda: ds)
        return ds
    raise DatasetError(f"{root}: no split {split!r} and not a class-folder directory")
