"""The embedded dataset: layout, determinism, atomic caching, and that colour is no shortcut."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main
from alexnet.data import synth

SMALL = dict(num_classes=4, train_per_class=3, val_per_class=2, size=32)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_class_names(tmp_path):
    out = synth.generate(tmp_path / "d", workers=1, **SMALL)
    folders = synth.class_folders(4)
    assert folders == sorted(folders)  # sorted folder order is the class index order
    for split, n in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == folders
        for f in folders:
            jpgs = sorted((out / split / f).glob("*.jpg"))
            assert len(jpgs) == n
            with Image.open(jpgs[0]) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 32)
    names = json.loads((out / "class_names.json").read_text())
    assert names == dict(zip(folders, synth.class_names(4), strict=True))
    meta = json.loads((out / synth.MARKER).read_text())
    assert meta["counts"] == {"train": 12, "val": 8} and meta["seed"] == 0
    assert len(set(synth.class_names(synth.MAX_CLASSES))) == synth.MAX_CLASSES >= 20


def test_open_dataset_reads_readable_names(tmp_path):
    from alexnet.data import open_dataset

    out = synth.generate(tmp_path / "d", workers=1, **SMALL)
    ds = open_dataset(out, "val")
    assert list(ds.class_names) == synth.class_names(4)
    assert len(ds) == 8
    x, y = ds[len(ds) - 1]
    assert x.shape == (3, 32, 32) and y == 3


def test_deterministic_across_worker_counts_and_seeded(tmp_path):
    a = _files(synth.generate(tmp_path / "a", seed=7, workers=1, **SMALL))
    b = _files(synth.generate(tmp_path / "b", seed=7, workers=2, **SMALL))
    c = _files(synth.generate(tmp_path / "c", seed=8, workers=1, **SMALL))
    assert a == b
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in jpgs)


def test_ensure_is_atomic_and_cached(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "embedded"
    real = synth.generate

    def interrupted(out, **kw):
        real(out, **{**kw, "num_classes": 2, "train_per_class": 1, "val_per_class": 1, "workers": 1})
        (Path(out) / synth.MARKER).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synth.ensure_embedded_dataset(target, progress=False, **SMALL)
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the partial directory is gone

    monkeypatch.setattr(synth, "generate", real)
    got = synth.ensure_embedded_dataset(target, progress=False, workers=1, **SMALL)
    assert got == target and synth.is_complete(target)
    assert sum(1 for _ in target.rglob("*.jpg")) == 4 * 5

    def must_not_run(*a, **k):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(synth, "generate", must_not_run)
    assert synth.ensure_embedded_dataset(target, progress=False) == target

    junk = tmp_path / "junk"
    (junk / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        synth.ensure_embedded_dataset(junk, progress=False)


def test_cache_path_environment(monkeypatch, tmp_path):
    for var in ("ALEXNET_DATA", "ALEXNET_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert synth.embedded_dataset_path() == tmp_path / "home" / ".cache" / "alexnet" / f"embedded-v{synth.VERSION}-seed0"
    monkeypatch.setenv("ALEXNET_HOME", str(tmp_path / "ah"))
    assert synth.embedded_dataset_path(3) == tmp_path / "ah" / "data" / f"embedded-v{synth.VERSION}-seed3"
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "ad"))
    assert synth.embedded_dataset_path().parent == tmp_path / "ad"


def _colour_histograms(images: np.ndarray, bins: int = 4) -> np.ndarray:
    q = (images // (256 // bins)).astype(np.int64)
    codes = q[..., 0] * bins * bins + q[..., 1] * bins + q[..., 2]
    h = np.stack([np.bincount(c.ravel(), minlength=bins**3) for c in codes]).astype(np.float64)
    return h / h.sum(1, keepdims=True)


def test_colour_alone_does_not_separate_the_classes():
    """Nearest-centroid on colour histograms (and on mean colour) stays near chance; the
    same check does catch a colour shortcut when one is planted (the positive control)."""
    rng_images, labels = [], []
    n_classes, per_class = synth.DEFAULT_CLASSES, 40
    for c in range(n_classes):
        for i in range(per_class):
            img = synth.render(c, synth._image_rng(123, "train", c, i), synth.DEFAULT_SIZE)
            rng_images.append(np.asarray(img))
            labels.append(c)
    x, y = np.stack(rng_images), np.array(labels)
    train = np.arange(len(y)) % per_class < 25  # 25 per class to fit, 15 to test
    chance = 1 / n_classes

    def colour_accuracy(images: np.ndarray) -> list[float]:
        accs = []
        for feats in (_colour_histograms(images), images.reshape(len(images), -1, 3).mean(1) / 255):
            centroids = np.stack([feats[train & (y == c)].mean(0) for c in range(n_classes)])
            pred = ((feats[~train, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
            accs.append(float((pred == y[~train]).mean()))
        return accs

    for acc in colour_accuracy(x):
        assert acc < chance + 0.07, f"colour features separate the classes: {acc:.3f} (chance {chance:.3f})"
    tint = np.random.default_rng(0).integers(0, 256, (n_classes, 3))
    planted = (0.5 * x + 0.5 * tint[y][:, None, None, :]).astype(np.uint8)
    assert min(colour_accuracy(planted)) > chance + 0.15


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["data", "synth", str(out), "--classes", "3", "--train-per-class", "2", "--val-per-class", "1", "--size", "24"]
    assert main([*args, "--workers", "1"]) == 0
    assert sum(1 for _ in out.rglob("*.jpg")) == 9
    assert "wrote 9 images" in capsys.readouterr().out
    assert main(args) == 2  # refuses to overwrite
    assert "not an empty directory" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(["data", "synth", str(tmp_path / "other"), "--classes", "2"]) == 2  # nor to mix in
    assert not (tmp_path / "other" / "train").exists()
    assert main(["data", "synth", str(tmp_path / "t"), "--classes", "99"]) == 2
    assert "classes must be between" in capsys.readouterr().err


def test_cli_help_states_the_real_defaults():
    from alexnet.cli import build_parser

    parser = build_parser()
    data = next(a for a in parser._subparsers._group_actions[0].choices["data"]._subparsers._group_actions)
    text = " ".join(data.choices["synth"].format_help().split())
    for value in (synth.DEFAULT_CLASSES, synth.DEFAULT_TRAIN_PER_CLASS, synth.DEFAULT_VAL_PER_CLASS, synth.DEFAULT_SIZE):
        assert f"default {value}" in text
    assert f"2..{synth.MAX_CLASSES}" in text
