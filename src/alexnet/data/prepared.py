"""The prepared format: a dataset resized once to S x S and packed into a few large files.

Layout of a prepared directory::

    index.json                 format, S, encoding, classes, names, per split: count,
                               shards (file, count, bytes, sha256), bad source files
    train-00000.bin ...        shard payloads: raw uint8 [n, 3, S, S] or concatenated JPEGs
    train.items.npy            int64 [N, 3]: shard, byte offset, byte length of each image
    train.labels.npy           int64 [N]
    train.sources.json         source file of each image (``path_of``)
    stats.safetensors          DatasetStats of the training split (mean image, RGB PCA)

Why: one ``open`` + ``mmap`` per shard instead of a million small files, no decoding at
all for ``raw`` (a batch is one gather from the page cache), and for ``jpeg`` small files
(about 20 kB per 256 px image at quality 90) decoded by libjpeg-turbo without resizing.

Preparation (:func:`prepare_dataset`) decodes every source image once in a process pool
(all cores), so bad source files are found here and listed in the index, never in
training. Each shard is written to a temporary file and renamed, then a sidecar
``<shard>.json`` marks it complete (with its labels, checksum and partial statistics):
an interrupted run resumes at the first incomplete shard.

Integrity: opening checks that every shard exists with its recorded size and that the
index is self-consistent (cheap, always): labels within the classes, entries inside their
shard. The index records the sha256 of every file: shards, each split's ``items``,
``labels`` and ``sources``, ``stats.safetensors``, and of the index itself
(``index_sha256``, over its canonical JSON without that key). :meth:`PreparedDataset.verify`
(``alexnet data info DIR --verify``, or ``verify=True``) checks them all and names the
file that changed; an index written before these checksums existed still opens, and
``verify`` says which files it could not check. A JPEG shard that fails to decode also
names its shard.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import multiprocessing.pool
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info
from tqdm import tqdm

from alexnet.data.decode import DecodeError, encode_jpeg, read_image, resize_center_crop
from alexnet.data.folder import FolderDataset, open_folder
from alexnet.data.stats import (
    STATS_FILE,
    DatasetStats,
    StatsAccumulator,
    load_stats_file,
    sample_stats,
    save_stats_file,
)
from alexnet.errors import DatasetError, ShardCorruptError
from alexnet.files import atomic_target, atomic_write_text

INDEX_FILE = "index.json"  # marks a prepared dataset
FORMAT = "alexnet-prepared"
log = logging.getLogger(__name__)
VERSION = 1
ENCODINGS = ("jpeg", "raw")
SHARD_BYTES = 1 << 30  # target shard size when --shard-size is not given
JPEG_BYTES_ESTIMATE = 1 / 8  # a q90 JPEG is about 1/8 of its raw size


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a JSON object")
    return data


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- preparation workers

_CFG: dict = {}


def _init_worker(cfg: dict) -> None:
    _CFG.clear()
    _CFG.update(cfg)
    torch.set_num_threads(1)


def _process(item: tuple[str, int, bool]) -> tuple[int, bytes | None, str, np.ndarray | None]:
    """Decode, resize and encode one source image: (label, payload or None, reason, image for stats)."""
    path, label, want_stats = item
    size = _CFG["size"]
    try:
        img = resize_center_crop(read_image(path, min_side=size), size)  # [S, S, 3]
    except DecodeError as exc:
        return label, None, f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason, None
    except Exception as exc:  # a decoder bug must cost one image, not the whole preparation
        return label, None, f"corrupt: {type(exc).__name__}: {exc}", None
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    payload = chw.tobytes() if _CFG["encoding"] == "raw" else encode_jpeg(img, _CFG["quality"])
    return label, payload, "", chw if want_stats else None


class _ShardStats:
    """Float64 partial sums of one shard (so that statistics resume with the shards)."""

    def __init__(self, size: int) -> None:
        self.sum_image = np.zeros((3, size, size), np.float64)
        self.sum_rgb = np.zeros(3, np.float64)
        self.sum_outer = np.zeros((3, 3), np.float64)
        self.count = 0
        self.pixels = 0

    def update(self, chw: np.ndarray) -> None:
        self.sum_image += chw
        rgb = chw.reshape(3, -1).astype(np.float32) / 255.0
        self.sum_rgb += rgb.sum(1, dtype=np.float64)
        self.sum_outer += (rgb @ rgb.T).astype(np.float64)
        self.count += 1
        self.pixels += rgb.shape[1]

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file(
            {
                "sum_image": self.sum_image,
                "sum_rgb": self.sum_rgb,
                "sum_outer": self.sum_outer,
                "count": np.array([self.count, self.pixels], np.int64),
            },
            str(path),
        )

    @staticmethod
    def merge(paths: Iterable[Path], size: int) -> StatsAccumulator:
        from safetensors.numpy import load_file

        acc = StatsAccumulator()
        for p in paths:
            t = load_file(str(p))
            if t["sum_image"].shape != (3, size, size):
                raise ShardCorruptError(f"{p}: statistics of the wrong size")
            img = torch.from_numpy(t["sum_image"])
            acc.sum_image = img if acc.sum_image is None else acc.sum_image + img
            acc.sum_rgb += torch.from_numpy(t["sum_rgb"])
            acc.sum_outer += torch.from_numpy(t["sum_outer"])
            acc.count += int(t["count"][0])
            acc.pixels += int(t["count"][1])
        return acc


# ---------------------------------------------------------------------- prepare


def _source_splits(src: Path, only: Sequence[str] | None, size: int) -> dict[str, FolderDataset]:
    if (src / INDEX_FILE).is_file():
        raise DatasetError(f"{src} is already a prepared dataset")
    candidates = ["train", "val", "test"]
    found = [s for s in candidates if (src / s).is_dir()]
    out: dict[str, FolderDataset] = {}
    if not found:  # a plain class-folder directory: one split
        ds = open_folder(src, None, image_size=size, validate="none")
        out[(only or ["train"])[0]] = ds  # type: ignore[assignment]
        return out
    for s in only or found:
        if s not in found:
            raise DatasetError(f"{src} has no split {s!r} (found: {', '.join(found)})")
        out[s] = open_folder(src, s, image_size=size, validate="none")
    return out


LOCK_FILE = ".prepare.lock"  # in OUT while a prepare_dataset runs there


@contextlib.contextmanager
def _prepare_lock(out: Path) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``OUT/.prepare.lock`` or raise :class:`DatasetError`.

    Two runs into one OUT would delete each other's ``*.tmp`` shards and race on the index.
    The kernel drops the lock when the process dies, however it dies, so a crashed run
    never blocks the next one; the file is removed on the way out. Since another run may
    have opened the file just before that removal, a lock is only trusted if the path
    still names the locked file. Yields the locked descriptor: forked workers must close it
    (:func:`_init_locked_worker`), or one outliving a killed run would keep the lock.
    """
    path = out / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DatasetError(
                f"{out}: another `data prepare` is writing here"
                f"{f' (process {holder})' if holder.isdigit() else ''}; wait for it to finish, "
                f"or choose another output directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # removed by the run that held it: lock the new file instead
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _init_locked_worker(cfg: dict, lock_fd: int) -> None:
    """A pool worker's start: drop its inherited copy of the prepare lock, then set up."""
    os.close(lock_fd)
    _init_worker(cfg)


def prepare_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 256,
    fmt: str = "jpeg",
    quality: int = 90,
    workers: int | None = None,
    shard_size: int | None = None,
    split: Sequence[str] | None = None,
    compute_statistics: bool = True,
    progress: bool = True,
) -> dict:
    """Convert a folder dataset at ``src`` to the prepared format in ``out``; returns the index.

    Rerunning after an interruption resumes at the first incomplete shard; rerunning a
    finished preparation returns its index. Parameters must match the interrupted run.
    """
    from alexnet.data.loader import default_workers

    src, out = Path(src), Path(out)
    if fmt not in ENCODINGS:
        raise DatasetError(f"format must be one of {ENCODINGS}, got {fmt!r}")
    if not 8 <= size <= 4096:
        raise DatasetError(f"size {size} outside 8..4096")
    if not 1 <= quality <= 100:
        raise DatasetError(f"JPEG quality {quality} outside 1..100")
    if not src.is_dir():
        raise DatasetError(f"source dataset not found: {src}")
    raw_bytes = 3 * size * size
    if shard_size is None:
        per_image = raw_bytes if fmt == "raw" else max(1, int(raw_bytes * JPEG_BYTES_ESTIMATE))
        shard_size = max(1, SHARD_BYTES // per_image)
    if shard_size < 1:
        raise DatasetError("shard size must be >= 1 image")

    splits = _source_splits(src, split, size)
    first = next(iter(splits.values()))
    classes, class_names = first.classes, first.class_names
    params = {
        "source": str(src.resolve()),
        "image_size": size,
        "encoding": fmt,
        "quality": quality if fmt == "jpeg" else None,
        "shard_size": shard_size,
        "classes": classes,
        "splits": {s: len(ds.samples) for s, ds in splits.items()},
        # resumed shards must come from the same files in the same order
        "listing_sha256": {s: _listing_digest(ds) for s, ds in splits.items()},
    }
    index_path = out / INDEX_FILE
    params_path = out / "prepare.json"
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with _prepare_lock(out) as lock_fd:
        if any(p.name != LOCK_FILE for p in out.iterdir()) and not (index_path.is_file() or params_path.is_file()):
            raise DatasetError(f"{out} is not empty and holds no preparation: choose an empty or new directory")
        if index_path.is_file():
            if _read_json(index_path).get("params") == params:
                log.info("%s: already prepared", out)
                return _read_json(index_path)
            raise DatasetError(f"{out} holds a different prepared dataset; choose another OUT or delete it")
        if params_path.is_file():
            if _read_json(params_path) != params:
                raise DatasetError(
                    f"{out} holds an interrupted preparation with other parameters or source files; delete it first"
                )
        else:
            atomic_write_text(params_path, json.dumps(params, indent=1))
        for tmp in out.glob("*.tmp"):
            tmp.unlink()

        stats_split = "train" if "train" in splits else next(iter(splits))
        jobs = []  # (split, shard number, items)
        for s, ds in splits.items():
            items = [(str(p), y) for p, y in ds.samples]
            for k in range(0, max(len(items), 1), shard_size):
                jobs.append((s, k // shard_size, items[k : k + shard_size]))
        total = sum(len(j[2]) for j in jobs)
        done = [j for j in jobs if _shard_done(out, j[0], j[1])]
        workers = workers or default_workers()
        cfg = {"size": size, "encoding": fmt, "quality": quality}
        # fork: workers inherit the imported modules (start-up in milliseconds, not seconds)
        pool = mp.get_context("fork").Pool(workers, initializer=_init_locked_worker, initargs=(cfg, lock_fd))
        t0 = time.time()
        bar = tqdm(total=total, initial=sum(len(j[2]) for j in done), unit="img", disable=not progress, desc="prepare")
        try:
            for s, k, items in jobs:
                if not _shard_done(out, s, k):
                    _write_shard(out, s, k, items, pool, size, compute_statistics and s == stats_split, bar)
            pool.close()
        except BaseException:  # Ctrl-C included: stop the workers now; finished shards stay
            pool.terminate()
            raise
        finally:
            pool.join()
            bar.close()
        index = _finalize(out, splits, params, class_names, jobs, stats_split if compute_statistics else None)
        log.info("prepared %s in %.1f s", out, time.time() - t0)
        return index


def _listing_digest(ds: FolderDataset) -> str:
    h = hashlib.sha256()
    for path, label in ds.samples:
        h.update(f"{label}\t{path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}"


def _shard_done(out: Path, split: str, k: int) -> bool:
    meta = out / f"{_shard_name(split, k)}.json"
    if not meta.is_file():
        return False
    try:
        m = json.loads(meta.read_text(encoding="utf-8"))
        return (out / m["file"]).stat().st_size == m["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_shard(
    out: Path,
    split: str,
    k: int,
    items: list[tuple[str, int]],
    pool: mp.pool.Pool,
    size: int,
    want_stats: bool,
    bar: tqdm,
) -> None:
    """Encode ``items`` into shard ``k`` of ``split``: payload, then statistics, then the
    sidecar JSON last (its presence marks the shard complete)."""
    name = _shard_name(split, k)
    final = out / f"{name}.bin"
    h = hashlib.sha256()
    labels, lengths, sources, bad = [], [], [], []
    stats = _ShardStats(size) if want_stats else None
    nbytes = 0
    with atomic_target(final) as tmp, open(tmp, "wb") as f:
        work = [(path, label, want_stats) for path, label in items]
        for (path, _), (label, payload, reason, chw) in zip(items, pool.imap(_process, work, chunksize=8), strict=True):
            bar.update(1)
            if payload is None:
                bad.append((path, reason))
                continue
            f.write(payload)
            h.update(payload)
            nbytes += len(payload)
            labels.append(int(label))
            lengths.append(len(payload))
            sources.append(path)
            if stats is not None and chw is not None:
                stats.update(chw)
        f.flush()
        os.fsync(f.fileno())
    if stats is not None and stats.count:
        stats.save(out / f"{name}.stats.safetensors")
    meta = {
        "file": final.name,
        "count": len(labels),
        "bytes": nbytes,
        "sha256": h.hexdigest(),
        "labels": labels,
        "lengths": lengths,
        "sources": sources,
        "bad_files": bad,
    }
    atomic_write_text(out / f"{name}.json", json.dumps(meta))


def _finalize(out, splits, params, class_names, jobs, stats_split) -> dict:
    index = {
        "format": FORMAT,
        "version": VERSION,
        "image_size": params["image_size"],
        "encoding": params["encoding"],
        "quality": params["quality"],
        "classes": params["classes"],
        "class_names": list(class_names),
        "splits": {},
        "stats": None,
        "params": params,
    }
    stats_parts = []
    for s, ds in splits.items():
        shards, items, labels, sources, bad = [], [], [], [], list(ds.bad_files)
        for js, k, _ in jobs:
            if js != s:
                continue
            name = _shard_name(s, k)
            m = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
            shard_id = len(shards)
            shards.append({"file": m["file"], "count": m["count"], "bytes": m["bytes"], "sha256": m["sha256"]})
            offsets = np.concatenate([[0], np.cumsum(m["lengths"], dtype=np.int64)])[:-1]
            items.append(
                np.stack([np.full(m["count"], shard_id, np.int64), offsets, np.asarray(m["lengths"], np.int64)], 1)
                if m["count"]
                else np.zeros((0, 3), np.int64)
            )
            labels.extend(m["labels"])
            sources.extend(m["sources"])
            bad.extend(tuple(b) for b in m["bad_files"])
            if s == stats_split and (out / f"{name}.stats.safetensors").is_file():
                stats_parts.append(out / f"{name}.stats.safetensors")
        np.save(out / f"{s}.items.npy", np.concatenate(items) if items else np.zeros((0, 3), np.int64))
        np.save(out / f"{s}.labels.npy", np.asarray(labels, np.int64))
        atomic_write_text(out / f"{s}.sources.json", json.dumps(sources))
        index["splits"][s] = {"count": len(labels), "shards": shards, "bad_files": [list(b) for b in bad]}
        index["splits"][s]["files"] = {name: sha256_file(out / name) for name in split_files(s)}
    if stats_parts:
        stats = _ShardStats.merge(stats_parts, params["image_size"]).finish()
        save_stats_file(stats, out / STATS_FILE)
        index["stats"] = STATS_FILE
        index["stats_sha256"] = sha256_file(out / STATS_FILE)
    atomic_write_text(out / INDEX_FILE, json.dumps(seal_index(index), indent=1))
    return index


# ---------------------------------------------------------------------- reading


def split_files(split: str) -> tuple[str, str, str]:
    """The index files of one split, whose checksums the index records."""
    return f"{split}.items.npy", f"{split}.labels.npy", f"{split}.sources.json"


def index_digest(index: dict) -> str:
    """sha256 of the index's canonical JSON without ``index_sha256``: what that key records,
    so an edit of ``index.json`` (classes, counts, checksums) is seen by ``verify``."""
    body = {k: v for k, v in index.items() if k != "index_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_index(index: dict) -> dict:
    """``index`` with its ``index_sha256`` (re)computed; call it last before writing."""
    index["index_sha256"] = index_digest(index)
    return index


def read_index(root: Path) -> dict:
    """The parsed ``index.json`` of the prepared dataset at ``root`` (format and version checked)."""
    try:
        index = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {root / INDEX_FILE}: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DatasetError(f"{root / INDEX_FILE} is not an {FORMAT} index")
    if index.get("version") != VERSION:
        raise DatasetError(f"{root}: prepared format version {index.get('version')}, this code reads {VERSION}")
    return index


class PreparedDataset(Dataset):
    """Random access to one split of a prepared dataset: ``(uint8 [3, S, S], label)``.

    Shards are memory-mapped lazily in each process (DataLoader workers, DDP ranks), so
    the object pickles cheaply and the page cache is shared between processes.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, verify: bool = False) -> None:
        self.root = Path(root)
        index = read_index(self.root)
        splits = index.get("splits") or {}
        if split not in splits:
            raise DatasetError(f"{self.root} has no split {split!r} (found: {', '.join(splits) or 'none'})")
        self.split = split
        self.index = index
        try:
            self.image_size = int(index["image_size"])
            self.encoding = str(index["encoding"])
            self.classes = [str(c) for c in index["classes"]]
            self.class_names = [str(c) for c in index["class_names"]]
            info = splits[split]
            self.shards = [
                {"file": str(s["file"]), "count": int(s["count"]), "bytes": int(s["bytes"]), "sha256": str(s["sha256"])}
                for s in info["shards"]
            ]
            self.bad_files = [(str(p), str(r)) for p, r in info.get("bad_files", [])]
            count = int(info["count"])
            self.items = np.load(self.root / f"{split}.items.npy", allow_pickle=False)
            self.labels = np.load(self.root / f"{split}.labels.npy", allow_pickle=False)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise DatasetError(f"{self.root}: damaged index ({type(exc).__name__}: {exc})") from None
        if self.encoding not in ENCODINGS:
            raise DatasetError(f"{self.root}: unknown encoding {self.encoding!r}")
        self._check(count)
        # a raw batch is one gather from the page cache: make_loader uses threads, not processes
        self.gather_in_threads = self.encoding == "raw"
        self._sources: list[str] | None = None
        self._maps: dict[int, np.ndarray] = {}
        self._stats: DatasetStats | None = None
        if verify:
            self.verify()

    def _check(self, count: int) -> None:
        """Cheap consistency checks of untrusted index data: sizes, ranges, shapes."""
        items, labels = self.items, self.labels
        if items.dtype != np.int64 or items.shape != (count, 3) or labels.shape != (count,):
            raise DatasetError(f"{self.root}: {self.split} index arrays do not match the count {count}")
        if labels.dtype.kind not in "iu":
            raise DatasetError(f"{self.root}: {self.split} labels are {labels.dtype}, not integer class indices")
        if count and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DatasetError(f"{self.root}: {self.split} labels outside 0..{len(self.classes) - 1}")
        if len(self.class_names) != len(self.classes):
            raise DatasetError(f"{self.root}: class names do not match classes")
        raw = 3 * self.image_size**2
        for i, s in enumerate(self.shards):
            path = self.root / s["file"]
            if Path(s["file"]).name != s["file"]:
                raise DatasetError(f"{self.root}: shard name {s['file']!r} is not a plain file name")
            try:
                actual = path.stat().st_size
            except OSError:
                raise ShardCorruptError(f"shard {path} is missing") from None
            if actual != s["bytes"]:
                raise ShardCorruptError(f"shard {path} has {actual} bytes, the index says {s['bytes']} (truncated?)")
            sel = items[items[:, 0] == i]
            if len(sel) != s["count"] or (len(sel) and (sel[:, 1].min() < 0 or (sel[:, 1] + sel[:, 2]).max() > actual)):
                raise DatasetError(f"{self.root}: index entries of shard {s['file']} point outside it")
            if self.encoding == "raw" and len(sel) and not (sel[:, 2] == raw).all():
                raise DatasetError(f"{self.root}: raw shard {s['file']} entries are not {raw} bytes")
        if count and (items[:, 0].min() < 0 or items[:, 0].max() >= len(self.shards)):
            raise DatasetError(f"{self.root}: {self.split} items refer to unknown shards")

    def verify(self, progress: bool = False) -> list[str]:
        """Check the sha256 of every file this split uses against the index: its shards,
        its ``items``/``labels``/``sources`` files, ``stats.safetensors`` and ``index.json``
        itself. A mismatch raises :class:`ShardCorruptError` naming the file.

        Returns the files that could not be checked because the index records no checksum
        for them (prepared before these were recorded); empty when everything was checked.
        """
        files: list[tuple[Path, str | None]] = [(self.root / s["file"], s["sha256"]) for s in self.shards]
        recorded = self.index["splits"][self.split].get("files")
        recorded = recorded if isinstance(recorded, dict) else {}
        files += [(self.root / name, recorded.get(name)) for name in split_files(self.split)]
        if self.index.get("stats") or (self.root / STATS_FILE).is_file():
            files.append((self.root / STATS_FILE, self.index.get("stats_sha256")))
        unchecked = []
        for path, want in tqdm(files, desc="verify", unit="file", disable=not progress):
            if want is None:
                unchecked.append(path.name)
                continue
            try:
                actual = sha256_file(path)
            except OSError as exc:
                raise ShardCorruptError(f"{path} cannot be read ({exc.strerror or exc})") from None
            if actual != str(want):
                what = "shard" if path.suffix == ".bin" else "file"
                raise ShardCorruptError(f"{what} {path} is corrupted or was edited: its sha256 does not match the index")
        index = read_index(self.root)  # as it is on disk now
        if "index_sha256" not in index:
            unchecked.append(INDEX_FILE)
        elif index_digest(index) != index["index_sha256"]:
            raise ShardCorruptError(f"{self.root / INDEX_FILE} was edited after preparation: its content does not match its index_sha256")
        return unchecked

    # -------------------------------------------------------------- access
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memmaps are reopened in each worker process
        return state

    def _map(self, shard: int) -> np.ndarray:
        m = self._maps.get(shard)
        if m is None:
            path = self.root / self.shards[shard]["file"]
            m = np.memmap(path, dtype=np.uint8, mode="r") if self.shards[shard]["bytes"] else np.zeros(0, np.uint8)
            self._maps[shard] = m
        return m

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def path_of(self, i: int) -> str:
        if self._sources is None:
            self._sources = json.loads((self.root / f"{self.split}.sources.json").read_text(encoding="utf-8"))
        return self._sources[i]

    def _decode(self, i: int, out: np.ndarray) -> None:
        shard, off, n = (int(v) for v in self.items[i])
        buf = self._map(shard)[off : off + n]
        s = self.image_size
        if self.encoding == "raw":
            out[...] = buf.reshape(3, s, s)
            return
        try:
            img = simplejpeg.decode_jpeg(buf, colorspace="RGB", strict=True)
        except (ValueError, RuntimeError) as exc:
            raise ShardCorruptError(f"shard {self.root / self.shards[shard]['file']}: image {i} does not decode ({exc})") from None
        if img.shape != (s, s, 3):
            raise ShardCorruptError(f"shard {self.shards[shard]['file']}: image {i} is {img.shape}, expected {s}x{s}")
        out[...] = img.transpose(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if i < 0:
            i += len(self)
        s = self.image_size
        out = np.empty((3, s, s), np.uint8)
        self._decode(i, out)
        return torch.from_numpy(out), int(self.labels[i])

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(uint8 [B, 3, S, S], int64 [B])``; for raw shards one gather per shard, no Python per image."""
        idx = np.asarray(indices, dtype=np.int64)
        s = self.image_size
        out = torch.empty((len(idx), 3, s, s), dtype=torch.uint8)
        if get_worker_info() is not None:
            out.share_memory_()  # fill it in place: sending it to the main process then costs no copy
        arr = out.numpy()
        if self.encoding == "raw":
            raw = 3 * s * s
            items = self.items[idx]
            for shard in np.unique(items[:, 0]):
                sel = np.nonzero(items[:, 0] == shard)[0]
                view = self._map(int(shard))[: self.shards[shard]["count"] * raw].reshape(-1, 3, s, s)
                local = items[sel, 1] // raw
                if len(sel) == len(idx):
                    np.take(view, local, axis=0, out=arr)  # the common case: one gather, no copy
                else:
                    arr[sel] = np.take(view, local, axis=0)
        else:
            for j, i in enumerate(idx):
                self._decode(int(i), arr[j])
        return out, torch.from_numpy(self.labels[idx])

    # -------------------------------------------------------------- statistics
    @property
    def stats(self) -> DatasetStats:
        """Stored statistics of the training split, else the ImageNet constants."""
        if self._stats is None:
            f = self.root / STATS_FILE
            self._stats = load_stats_file(f) if f.is_file() else DatasetStats.imagenet_fallback()
        return self._stats

    @stats.setter
    def stats(self, value: DatasetStats) -> None:
        self._stats = value

    def compute_stats(self, max_images: int | None = None, batch: int = 256) -> DatasetStats:
        return sample_stats(self, max_images, batch)

    def __repr__(self) -> str:
        return (
            f"PreparedDataset({self.root}, split={self.split!r}, {len(self)} images, {len(self.classes)} classes, "
            f"{self.encoding} {self.image_size}x{self.image_size})"
        )


def record_stats(root: Path) -> None:
    """Name the stored ``stats.safetensors`` in the index of the prepared dataset at ``root``."""
    index = read_index(root)
    index["stats"] = STATS_FILE
    index["stats_sha256"] = sha256_file(root / STATS_FILE)
    if "index_sha256" in index:  # an older index without checksums stays one
        seal_index(index)
    atomic_write_text(root / INDEX_FILE, json.dumps(index, indent=1))
