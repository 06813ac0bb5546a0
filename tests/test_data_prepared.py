"""The prepared format: equality with the folder dataset, checksums, resume, stats, CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet.data.prepared as prepared
from alexnet.cli import main as cli
from alexnet.data import DatasetError, open_dataset
from alexnet.data.loader import ThreadBatchLoader, make_loader
from alexnet.data.prepared import PreparedDataset, ShardCorruptError, prepare_dataset

CLASSES = ("n01440764", "n01443537", "n01484850")


def _tree(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c_i, c in enumerate(CLASSES):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                base = np.zeros(3)
                base[c_i] = 200
                img = np.clip(rng.normal(base + 20, 15, (30 + 3 * k, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{k}.JPEG", quality=95)
    (root / "train" / CLASSES[0] / "zero.JPEG").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def raw(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "raw"
    prepare_dataset(src, out, size=16, fmt="raw", workers=2, shard_size=5, progress=False)
    return out


def test_raw_equals_the_folder_dataset(src, raw):
    folder = open_dataset(src, "train", image_size=16)
    ds = open_dataset(raw, "train")
    assert isinstance(ds, PreparedDataset)
    assert len(ds) == len(folder) == 12  # the zero-byte file is left out...
    assert [Path(p).name for p, _ in ds.bad_files] == ["zero.JPEG"]  # ...and reported
    assert ds.classes == list(CLASSES) and ds.class_names == ["tench", "goldfish", "great white shark"]
    assert len(ds.shards) == 3 and ds.image_size == 16
    by_path = {folder.path_of(i): i for i in range(len(folder))}
    for i in range(len(ds)):
        x, y = ds[i]
        fx, fy = folder[by_path[ds.path_of(i)]]
        assert y == fy and torch.equal(x, fx)
    x, y = ds.get_batch([11, 0, 5])  # spans shards
    assert torch.equal(x[0], ds[11][0]) and torch.equal(x[2], ds[5][0])
    assert y.tolist() == [ds[11][1], ds[0][1], ds[5][1]]
    assert len(open_dataset(raw, "val")) == 6


def test_stats_are_those_of_the_training_images(src, raw):
    ds = open_dataset(raw, "train")
    ref = ds.compute_stats()
    assert ds.stats.count == 12
    assert torch.allclose(ds.stats.mean_image, ref.mean_image, atol=1e-3)
    assert torch.allclose(ds.stats.eigval, ref.eigval, atol=1e-5)


def test_jpeg_format_close_to_raw(src, raw, tmp_path):
    out = tmp_path / "jpeg"
    prepare_dataset(src, out, size=16, fmt="jpeg", quality=95, workers=1, progress=False)
    a, b = PreparedDataset(raw, "train"), PreparedDataset(out, "train")
    assert b.encoding == "jpeg" and len(a) == len(b)
    xa, ya = a.get_batch(range(len(a)))
    xb, yb = b.get_batch(range(len(b)))
    assert torch.equal(ya, yb)
    assert (xa.float() - xb.float()).abs().mean() < 6


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_loader_over_prepared_with_workers(src, raw, tmp_path, fmt):
    if fmt == "jpeg":
        raw = tmp_path / "jpeg"
        prepare_dataset(src, raw, size=16, fmt="jpeg", workers=1, progress=False)
    ds = open_dataset(raw, "train")
    loader = make_loader(ds, 4, seed=0, epoch=1, num_workers=2, persistent_workers=False)
    assert isinstance(loader, ThreadBatchLoader) == (fmt == "raw")  # raw: gathered in threads
    batches = list(loader)
    assert len(batches) == len(loader) == loader.batches_per_epoch == 3
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == sorted(ds.labels.tolist())
    ref = list(make_loader(ds, 4, seed=0, epoch=1, num_workers=0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, ref, strict=True))
    loader.set_epoch(1, start_batch=2)  # resume
    tail = list(loader)
    assert len(tail) == 1 and torch.equal(tail[0][0], ref[2][0])


@pytest.mark.reliability
def test_corrupted_shard_is_named(raw, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    shard = copy / "train-00001.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    ds = PreparedDataset(copy, "train")  # same size: only the checksum can tell
    with pytest.raises(ShardCorruptError, match=r"train-00001\.bin"):
        ds.verify()
    with pytest.raises(ShardCorruptError, match=r"train-00001\.bin"):
        PreparedDataset(copy, "train", verify=True)
    shard.write_bytes(bytes(data[:-10]))  # truncated: caught when opening
    with pytest.raises(ShardCorruptError, match=r"train-00001\.bin"):
        open_dataset(copy, "train")
    assert cli(["data", "info", str(copy)]) == 2


@pytest.mark.reliability
def test_damaged_index_is_an_error(raw, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    index = json.loads((copy / "index.json").read_text())
    index["splits"]["train"]["shards"][0]["file"] = "../../etc/passwd"
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetError):
        open_dataset(copy, "train")
    np.save(copy / "val.labels.npy", np.full(6, 7, np.int64))  # label out of range
    with pytest.raises(DatasetError, match="labels"):
        open_dataset(copy, "val")
    (copy / "index.json").write_text("{not json")
    with pytest.raises(DatasetError):
        open_dataset(copy, "val")


@pytest.mark.reliability
def test_interrupted_prepare_resumes(src, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real = prepared._write_shard
    calls, interrupted = [], []

    class Interrupted(Exception):
        pass

    def flaky(out_, split, k, *args):
        calls.append((split, k))
        if (split, k) == ("train", 1) and not interrupted:  # stands in for Ctrl-C during shard 1
            interrupted.append(True)
            raise Interrupted
        return real(out_, split, k, *args)

    monkeypatch.setattr(prepared, "_write_shard", flaky)
    with pytest.raises(Interrupted):
        prepare_dataset(src, out, size=16, fmt="raw", workers=1, shard_size=5, progress=False)
    assert (out / "train-00000.json").is_file() and not (out / "index.json").exists()
    first = (out / "train-00000.bin").stat().st_mtime_ns
    calls.clear()
    index = prepare_dataset(src, out, size=16, fmt="raw", workers=1, shard_size=5, progress=False)
    assert ("train", 0) not in calls  # the finished shard was not redone
    assert (out / "train-00000.bin").stat().st_mtime_ns == first
    assert index["splits"]["train"]["count"] == 12
    monkeypatch.setattr(prepared, "_write_shard", real)
    ref = tmp_path / "ref"
    prepare_dataset(src, ref, size=16, fmt="raw", workers=1, shard_size=5, progress=False)
    a, b = PreparedDataset(out), PreparedDataset(ref)
    assert torch.equal(a.get_batch(range(12))[0], b.get_batch(range(12))[0])
    assert torch.equal(a.stats.mean_image, b.stats.mean_image)
    with pytest.raises(DatasetError, match="different"):
        prepare_dataset(src, out, size=8, fmt="raw", workers=1, progress=False)


def test_cli_prepare_info_stats(src, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["data", "prepare", str(src), str(out), "--size", "16", "--format", "raw", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "1 bad source files" in text and "zero.JPEG" in text
    assert cli(["data", "info", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "train: 12 images, 3 classes" in text and "checksums OK" in text and "tench" in text
    assert cli(["data", "stats", str(src), "--max-images", "6"]) == 0  # a folder dataset
    assert (src / "stats.safetensors").is_file()
    assert open_dataset(src, "train", image_size=16).stats.count == 6
    (src / "stats.safetensors").unlink()
    assert cli(["data", "prepare", str(tmp_path / "nope"), str(out)]) == 2


def test_resume_refuses_changed_sources(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src", per_class=2)
    out = tmp_path / "out"

    def interrupted(*args):
        raise RuntimeError("stop")

    monkeypatch.setattr(prepared, "_write_shard", interrupted)
    with pytest.raises(RuntimeError):
        prepare_dataset(src, out, size=8, fmt="raw", workers=1, progress=False)
    monkeypatch.undo()
    (src / "train" / CLASSES[1] / "0.JPEG").rename(src / "train" / CLASSES[1] / "renamed.JPEG")
    with pytest.raises(DatasetError, match="interrupted preparation"):
        prepare_dataset(src, out, size=8, fmt="raw", workers=1, progress=False)


def test_refuses_unrelated_output_directory(src, tmp_path):
    busy = tmp_path / "home"
    busy.mkdir()
    (busy / "notes.tmp").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        prepare_dataset(src, busy, size=8, fmt="raw", workers=1, progress=False)
    assert (busy / "notes.tmp").read_text() == "mine"


def _prepare_held_midway(src: Path, out: Path, started, **kw) -> None:
    """In a child process: a prepare that stops inside its first shard, as if busy, until killed."""

    def busy(*args):
        started.set()
        time.sleep(60)  # bounded: the test kills this process long before

    prepared._write_shard = busy
    prepare_dataset(src, out, progress=False, **kw)


@pytest.mark.reliability
@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_second_prepare_into_the_same_output_is_told_another_runs(src, tmp_path, fmt):
    out = tmp_path / "shared"
    kw = {"size": 16, "fmt": fmt, "workers": 1, "shard_size": 5}
    ctx = mp.get_context("fork")
    started = ctx.Event()
    first = ctx.Process(target=_prepare_held_midway, args=(src, out, started), kwargs=kw)
    first.start()
    try:
        assert started.wait(30), "the first prepare never started"
        for other in (kw, {**kw, "size": 8}):  # the same job or another one: both refused, nothing touched
            with pytest.raises(DatasetError, match=rf"another `data prepare` is writing here \(process {first.pid}\)"):
                prepare_dataset(src, out, progress=False, **other)
        assert (out / "prepare.json").is_file() and not (out / "index.json").exists()
    finally:
        first.kill()  # a crash: the kernel releases the lock with the process
        first.join(10)
    index = prepare_dataset(src, out, progress=False, **kw)  # resumes the crashed run
    assert index["splits"]["train"]["count"] == 12 and not (out / prepared.LOCK_FILE).exists()
    assert prepare_dataset(src, out, progress=False, **kw) == index


def test_lock_file_left_by_a_crash_does_not_block(src, tmp_path):
    out = tmp_path / "crashed"
    out.mkdir()
    (out / prepared.LOCK_FILE).write_text("12345\n")  # killed right after taking the lock
    index = prepare_dataset(src, out, size=8, fmt="raw", workers=1, progress=False)
    assert index["splits"]["val"]["count"] == 6
