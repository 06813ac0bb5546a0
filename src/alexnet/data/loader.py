"""Batches for training and evaluation: ``(uint8 [B, 3, S, S], int64 [B])``.

The sampler produces whole batches of indices and the DataLoader hands each batch to a
worker, which builds it with the dataset's ``get_batch`` (a single memmap gather for
prepared raw data, JPEG decodes for JPEG shards, file decodes for folders). So per-item
Python work happens only where there is decoding to do, and augmentation stays on the
batch (``TrainAugment`` on the device).

Order is a pure function of ``(seed, epoch, rank, world_size)``: the same permutation on
every rank, padded (or cut, with ``drop_last``) to a multiple of ``world_size`` and dealt
round-robin, like ``DistributedSampler``. That makes resuming exact: ``set_epoch(epoch,
start_batch=k)`` yields batches ``k, k+1, ...`` of that epoch, identical to what an
uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from alexnet.errors import AlexNetError


class ResumableBatchSampler(Sampler[list[int]]):
    """Distributed, deterministic, resumable batches of dataset indices."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_items, self.batch_size = num_items, batch_size
        self.shuffle, self.seed, self.rank, self.world_size, self.drop_last = shuffle, seed, rank, world_size, drop_last
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (reshuffles) and the first batch to yield (for resuming)."""
        if start_batch < 0 or start_batch > self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def items_per_rank(self) -> int:
        n, w = self.num_items, self.world_size
        return n // w if self.drop_last else -(-n // w)

    @property
    def batches_per_epoch(self) -> int:
        m = self.items_per_rank
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def rank_indices(self) -> Tensor:
        """This rank's indices for the current epoch, in order (int64)."""
        n = self.num_items
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.items_per_rank * self.world_size
        if total > n:  # pad by repeating from the start, as DistributedSampler does
            order = torch.cat([order, order.repeat(-(-total // max(n, 1)))[: total - n]])
        return order[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.rank_indices()
        b = self.batch_size
        for k in range(self.start_batch, self.batches_per_epoch):
            yield idx[k * b : (k + 1) * b].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def _rebuild_error(cls: type[AlexNetError], args: tuple, state: dict) -> AlexNetError:
    """The exception ``cls`` with ``args`` and attributes ``state``, without calling its
    ``__init__`` (``DecodeError(reason, detail, path)`` cannot be re-made from its message)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class _Failed:
    """A project error met while building a batch, sent back in place of the batch.

    Raised in a worker process, an exception reaches the trainer as torch's wrapper: the
    class re-made from the worker's whole traceback text ("Caught DecodeError in DataLoader
    worker process 1 ... Original Traceback ..."), or a ``RuntimeError`` when the class
    cannot be made from one string. Sent as a value instead, it is raised again in the
    main process as the very class, message and attributes it had in the worker, so the
    command line prints the same one line whether or not workers are used. Anything else
    (a bug) keeps torch's traceback.
    """

    def __init__(self, error: AlexNetError) -> None:
        self.error = error

    def __reduce__(self):  # class by reference, then args and attributes: see _rebuild_error
        e = self.error
        return _failed_from, (type(e), e.args, dict(e.__dict__))


def _failed_from(cls: type[AlexNetError], args: tuple, state: dict) -> _Failed:
    return _Failed(_rebuild_error(cls, args, state))


class _Batches(Dataset):
    """Wraps a dataset so that ``dataset[list_of_indices]`` is a whole collated batch.

    Each batch also carries the bad files the dataset recorded while building it: in a
    worker process that record lives in the worker's copy of the dataset, and this is how
    it reaches the dataset in the trainer (:meth:`BatchLoader.__iter__`). A project error
    comes back as :class:`_Failed` and is raised there.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, list[tuple[str, str]]] | _Failed:
        try:
            return self._batch(indices)
        except AlexNetError as exc:
            return _Failed(exc)

    def _batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, list[tuple[str, str]]]:
        bad = getattr(self.dataset, "bad_files", None)
        known = len(bad) if isinstance(bad, list) else 0
        get_batch = getattr(self.dataset, "get_batch", None)
        if get_batch is not None:
            x, y = get_batch(indices)
        else:
            items = [self.dataset[i] for i in indices]
            x, y = torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.int64)
        return x, y, bad[known:] if isinstance(bad, list) else []  # tuples again in _collect


class BatchLoader(DataLoader):
    """A DataLoader over whole batches, with ``set_epoch(epoch, start_batch)`` for exact resume."""

    batch_sampler_: ResumableBatchSampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.batch_sampler_.set_epoch(epoch, start_batch)

    @property
    def batches_per_epoch(self) -> int:
        return self.batch_sampler_.batches_per_epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:  # type: ignore[override]
        """``(x, y)`` batches; bad files found while building them (in whichever process)
        are added to this process's ``dataset.bad_files``, once each."""
        # Not a generator itself: the DataLoader iterator (which draws its base seed from the
        # global RNG) is made here, when ``iter()`` is called, not at the first ``next()``.
        return self._collect(super().__iter__(), getattr(self.dataset.dataset, "bad_files", None))  # type: ignore[attr-defined]

    @staticmethod
    def _collect(batches: Iterator, sink: object) -> Iterator[tuple[Tensor, Tensor]]:
        return _Collected(batches, sink)


class _Collected:
    """The batches of one pass, with bad files added to ``sink`` and project errors raised.

    An iterator object rather than a generator: a generator is finished once it raises, and
    a caller that catches one bad batch's error may go on to the next.
    """

    def __init__(self, batches: Iterator, sink: object) -> None:
        self.batches, self.sink = batches, sink

    def __iter__(self) -> _Collected:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        batch = next(self.batches)
        if isinstance(batch, _Failed):
            raise batch.error
        x, y, bad = batch  # the transport (pinning, collation) may turn tuples into lists
        if bad and isinstance(self.sink, list):
            self.sink.extend(e for e in map(tuple, bad) if e not in self.sink)
        return x, y


class ThreadBatchLoader:
    """Batches gathered by background threads of this process, for datasets whose
    ``get_batch`` is a copy out of memory-mapped shards (``gather_in_threads = True``: the
    prepared raw format). There, a worker process would only add work: its batch has to be
    copied into a fresh shared-memory segment (page faults for every 4 kB) and mapped again
    in the trainer, which costs more CPU than the gather itself; numpy's gather releases
    the GIL, so threads overlap with the training step just as well.

    Same interface as :class:`BatchLoader`: iterate, ``len``, ``set_epoch``, ``batches_per_epoch``.
    """

    def __init__(
        self, dataset: Dataset, sampler: ResumableBatchSampler, threads: int, prefetch: int, pin_memory: bool
    ) -> None:
        self.dataset, self.batch_sampler_ = dataset, sampler
        self.threads, self.prefetch, self.pin_memory = max(1, threads), max(1, prefetch), pin_memory
        self.num_workers = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.batch_sampler_.set_epoch(epoch, start_batch)

    @property
    def batches_per_epoch(self) -> int:
        return self.batch_sampler_.batches_per_epoch

    def __len__(self) -> int:
        return len(self.batch_sampler_)

    def _load(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        x, y = self.dataset.get_batch(indices)  # type: ignore[attr-defined]
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = iter(self.batch_sampler_)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="alexnet-loader")
        pending: deque[Future] = deque()
        try:
            for indices in itertools.islice(batches, self.prefetch):
                pending.append(pool.submit(self._load, indices))
            while pending:
                batch = pending.popleft().result()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, nxt))
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """Worker processes: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    drop_last: bool | None = None,
    start_batch: int = 0,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
    persistent_workers: bool = True,
) -> BatchLoader | ThreadBatchLoader:
    """DataLoader yielding ``(uint8 [B, 3, S, S], int64 [B])`` for this rank.

    ``drop_last`` defaults to ``shuffle`` (training drops the ragged batch; evaluation
    keeps every image, and with ``world_size > 1`` pads by repeating a few images, as
    ``DistributedSampler`` does). ``start_batch`` resumes mid-epoch; later epochs begin
    at 0 via ``loader.set_epoch(e)``. Memory is pinned when CUDA is available.
    ``num_workers`` processes build the batches, or threads for the prepared raw format
    (see :class:`ThreadBatchLoader`).
    """
    if drop_last is None:
        drop_last = shuffle
    sampler = ResumableBatchSampler(
        len(dataset),  # type: ignore[arg-type]
        batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        start_batch=start_batch,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )
    workers = default_workers() if num_workers is None else num_workers
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    if workers > 0 and getattr(dataset, "gather_in_threads", False):
        return ThreadBatchLoader(dataset, sampler, workers, prefetch_factor * workers, pin)  # type: ignore[return-value]
    kw = {}
    if workers > 0:
        kw = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers}
    loader = BatchLoader(
        _Batches(dataset),
        batch_size=None,  # the sampler yields whole batches; workers build them
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        **kw,
    )
    loader.batch_sampler_ = sampler
    return loader


# --------------------------------------------------------------------------- epoch batches


class EpochBatches:
    """One process's batches, epoch by epoch, over a loader that lives for the whole run.

    ``make_loader`` deals a (seed, epoch)-determined order round-robin to the processes
    (DistributedSampler's rule), so one process with a global batch of B x N sees exactly
    the union of what N processes with batch B see, step by step; ``epoch(e, start)``
    restarts it at batch ``start`` of epoch ``e`` (resume).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.loader = make_loader(
            dataset,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=0,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            drop_last=shuffle,
            pin_memory=pin_memory,
        )

    @property
    def per_epoch(self) -> int:
        """Batches in a whole epoch."""
        return self.loader.batches_per_epoch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``epoch`` from batch ``start`` on."""
        self.loader.set_epoch(epoch, start)
        # Creating a DataLoader iterator draws a seed from the global RNG; fork it so that the
        # RNG stream the model sees (dropout) does not depend on where an epoch was resumed.
        with torch.random.fork_rng(devices=[]):
            it = iter(self.loader)
        yield from it
