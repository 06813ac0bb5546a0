"""Hostile data: runs of bad files, symlink loops, odd-sized images, edited prepared indexes,
and evaluation that must count only the images it actually read.

Every case here is a bad input a user can hand the toolkit; each test fails on the code
before its fix (see the commit that added it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data import DatasetError, open_dataset
from alexnet.data.loader import make_loader

pytestmark = pytest.mark.reliability

COLOURS = ((220, 20, 20), (20, 220, 20), (20, 20, 220))


def _jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)
    return path


def _truncated(path: Path, seed: int = 0) -> Path:
    """A JPEG whose header is fine (it passes the index-time probe) but whose pixel data is cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path, format="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _dominant(x: torch.Tensor) -> int:
    return int(x.float().mean(dim=(1, 2)).argmax())


def _classes(root: Path, good: dict[str, int], bad: dict[str, int]) -> Path:
    """Class folders ``c0``, ``c1``, ``c2`` (colour = label) with ``good`` readable and
    ``bad`` truncated files each."""
    for c in range(3):
        name = f"c{c}"
        for k in range(good.get(name, 0)):
            _jpeg(root / name / f"g{k:03d}.jpg", COLOURS[c])
        for k in range(bad.get(name, 0)):
            _truncated(root / name / f"b{k:03d}.jpg", seed=k)
    return root


# --------------------------------------------------------------------- class 4: runs of bad files


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ({"c0": 3, "c1": 3, "c2": 3}, {"c1": 70}),  # the case: 70 in a row, mid-dataset
        ({"c0": 2, "c1": 2, "c2": 2}, {"c2": 90}),  # at the end: the search wraps around
        ({"c0": 1, "c1": 4, "c2": 1}, {"c0": 65, "c2": 65}),  # two long runs
    ],
)
def test_any_number_of_bad_files_in_a_row_training_goes_on(tmp_path, monkeypatch, figure, good, bad):
    import alexnet.data.folder as folder

    ds = open_dataset(_classes(tmp_path / "ds", good, bad), "train", image_size=8)
    n_bad = sum(bad.values())
    assert len(ds) == sum(good.values()) + n_bad  # the header probe cannot see truncation
    with pytest.warns(UserWarning, match="skipping bad image"):
        first = list(make_loader(ds, 16, shuffle=True, seed=1, num_workers=0))
    labels = torch.cat([y for _, y in first])
    images = torch.cat([x for x, _ in first])
    assert all(_dominant(x) == int(y) for x, y in zip(images, labels, strict=True))  # never mislabelled
    assert sorted(Path(p).name for p, _ in ds.bad_files) == sorted(
        f"b{k:03d}.jpg" for c, n in bad.items() for k in range(n)
    )
    assert all(r in ("truncated", "corrupt") for _, r in ds.bad_files)
    assert ds.substituted_items == n_bad  # what training reports: substitutions per epoch
    figure(f"bad files in a row survived ({n_bad})", n_bad)

    # a later epoch decodes no bad file again: one decode per item drawn
    calls = []
    real = folder.load_resized
    monkeypatch.setattr(folder, "load_resized", lambda p, s: calls.append(p) or real(p, s))
    before = ds.substitutions
    second = list(make_loader(ds, 16, shuffle=True, seed=1, epoch=1, num_workers=0, drop_last=False))
    assert len(calls) == sum(len(y) for _, y in second) == len(ds)
    assert ds.substitutions - before == n_bad


def test_bad_files_found_in_a_worker_reach_the_substitution_count(tmp_path):
    ds = open_dataset(_classes(tmp_path / "ds", {"c0": 2, "c1": 2, "c2": 2}, {"c1": 70}), "train", image_size=8)
    batches = list(make_loader(ds, 8, shuffle=False, num_workers=1, persistent_workers=False))
    assert sum(len(y) for _, y in batches) == len(ds)
    assert ds.substituted_items == 70 and len(ds.bad_files) == 70


@pytest.mark.parametrize("bad_class", ["c0", "c1", "c2"])
def test_a_class_with_no_readable_image_stops_with_its_name(tmp_path, bad_class):
    good = {c: 2 for c in ("c0", "c1", "c2") if c != bad_class}
    ds = open_dataset(_classes(tmp_path / "ds", good, {bad_class: 5}), "train", image_size=8)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=rf"class '{bad_class}' has no readable image"):
        list(make_loader(ds, 4, shuffle=True, seed=0, num_workers=0))
