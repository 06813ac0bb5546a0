"""make_loader: shapes, determinism, exact mid-epoch resume, DDP partitioning."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from alexnet.data.loader import ResumableBatchSampler, make_loader
from alexnet.errors import (
    AlexNetError,
    DatasetError,
    DecodeError,
    ExplorerError,
    ShardCorruptError,
    TrainingError,
)


class Toy(Dataset):
    """Image i is filled with i (mod 256) and labelled i, so batches reveal their indices."""

    def __init__(self, n: int, size: int = 8) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((3, self.size, self.size), i % 256, dtype=torch.uint8), i


def _labels(loader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def test_batches_are_uint8_and_int64():
    loader = make_loader(Toy(10), 4, shuffle=True, num_workers=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 2  # drop_last for training
    x, y = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 8, 8) and y.dtype == torch.int64
    assert torch.equal(x[:, 0, 0, 0].long(), y)  # image and label travel together


def test_eval_keeps_every_item_in_order():
    assert _flat(_labels(make_loader(Toy(10), 4, shuffle=False, num_workers=0))) == list(range(10))


def test_order_depends_on_seed_and_epoch_only():
    a = _labels(make_loader(Toy(50), 8, seed=3, epoch=1, num_workers=0))
    b = _labels(make_loader(Toy(50), 8, seed=3, epoch=1, num_workers=0))
    c = _labels(make_loader(Toy(50), 8, seed=3, epoch=2, num_workers=0))
    assert a == b and a != c
    loader = make_loader(Toy(50), 8, seed=3, epoch=1, num_workers=0)
    loader.set_epoch(2)
    assert _labels(loader) == c


@pytest.mark.parametrize("start", [0, 1, 4, 6])
def test_resume_mid_epoch_yields_the_remaining_batches(start):
    full = _labels(make_loader(Toy(53), 8, seed=7, epoch=5, num_workers=0))
    resumed = make_loader(Toy(53), 8, seed=7, epoch=5, start_batch=start, num_workers=0)
    assert len(resumed) == len(full) - start
    assert _labels(resumed) == full[start:]
    resumed.set_epoch(6)  # the next epoch starts from its beginning
    assert _labels(resumed) == _labels(make_loader(Toy(53), 8, seed=7, epoch=6, num_workers=0))


def test_resume_bounds_checked():
    with pytest.raises(ValueError):
        make_loader(Toy(10), 4, start_batch=3, num_workers=0)


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_partition_the_epoch(drop_last):
    n, world = 37, 3
    per_rank = [
        _flat(_labels(make_loader(Toy(n), 4, seed=1, rank=r, world_size=world, drop_last=drop_last, num_workers=0)))
        for r in range(world)
    ]
    if drop_last:  # whole batches only, no overlap
        flat = _flat(per_rank)
        assert len(flat) == len(set(flat))
    else:  # every item seen; padding repeats a few (as DistributedSampler)
        assert set(_flat(per_rank)) == set(range(n))
        assert len({len(r) for r in per_rank}) == 1
    s = ResumableBatchSampler(n, 4, rank=1, world_size=world, seed=1, drop_last=drop_last)
    assert len(list(s)) == s.batches_per_epoch


def test_workers_give_the_same_batches():
    ref = _labels(make_loader(Toy(40), 8, seed=2, num_workers=0))
    assert _labels(make_loader(Toy(40), 8, seed=2, num_workers=2, persistent_workers=False)) == ref


def test_bad_arguments():
    with pytest.raises(ValueError):
        ResumableBatchSampler(10, 0)
    with pytest.raises(ValueError):
        ResumableBatchSampler(10, 2, rank=2, world_size=2)


class Flaky(Toy):
    """Items 3 and 7 fail to decode: recorded in ``bad_files`` of whichever process hit them."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.bad_files: list[tuple[str, str]] = []

    def __getitem__(self, i: int):
        if i in (3, 7) and (f"img{i}", "truncated") not in self.bad_files:
            self.bad_files.append((f"img{i}", "truncated"))
        return super().__getitem__(i)


@pytest.mark.reliability
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_found_in_workers_reach_the_main_process(workers):
    ds = Flaky(24)
    loader = make_loader(ds, 4, seed=0, num_workers=workers)
    for epoch in range(2):  # persistent workers: the second epoch finds nothing new
        loader.set_epoch(epoch)
        assert sum(len(y) for _, y in loader) == 24
    assert sorted(ds.bad_files) == [("img3", "truncated"), ("img7", "truncated")]


# One of each shape of project error: plain message, a ValueError too, extra attributes set
# by an __init__ that does not take the message (DecodeError, ExplorerError).
ERRORS = [
    DatasetError("dataset /data/x: class folder 'cat' is empty"),
    ShardCorruptError("shard train-00003.bin: image 17 does not decode (bad Huffman code)"),
    DecodeError("truncated", "image file is truncated", "/data/x/cat/17.JPEG"),
    ExplorerError(413, "upload too large"),
    TrainingError("loss diverged"),
]


class Failing(Toy):
    """Item i < len(ERRORS) raises ERRORS[i]; the rest are fine."""

    def __getitem__(self, i: int):
        if i < len(ERRORS):
            raise ERRORS[i]
        return super().__getitem__(i)


class FailingBatches(Failing):
    def get_batch(self, indices):
        items = [self[i] for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


@pytest.mark.reliability
@pytest.mark.parametrize("dataset", [Failing, FailingBatches])
@pytest.mark.parametrize("workers", [0, 2])
def test_errors_in_workers_reach_the_user_as_in_the_main_process(dataset, workers):
    # One batch per item, in order: each error in turn, then the good items still load.
    loader = make_loader(dataset(len(ERRORS) + 2), 1, shuffle=False, num_workers=workers)
    batches = iter(loader)
    for expected in ERRORS:
        with pytest.raises(AlexNetError) as e:
            next(batches)
        assert type(e.value) is type(expected)
        assert str(e.value) == str(expected) and vars(e.value) == vars(expected)
        assert "DataLoader worker" not in str(e.value)
    assert [y.tolist() for _, y in batches] == [[len(ERRORS)], [len(ERRORS) + 1]]
