"""Folder datasets: ImageNet layout, plain class folders, ILSVRC validation, bad files, stats."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data import DatasetError, DatasetStats, open_dataset
from alexnet.data.imagenet import IMAGENET_SYNSET_INDEX
from alexnet.data.stats import STATS_FILE, save_stats_file


def _jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)
    return path


COLOURS = {"n01440764": (220, 20, 20), "n01443537": (20, 220, 20), "n01484850": (20, 20, 220)}


def _imagenet_tree(root: Path, per_class: int = 3) -> Path:
    for split in ("train", "val"):
        for c, colour in COLOURS.items():
            for k in range(per_class):
                _jpeg(root / split / c / f"{c}_{k}.JPEG", colour)
    return root


def _dominant(x: torch.Tensor) -> int:
    return int(x.float().mean(dim=(1, 2)).argmax())


def test_imagenet_layout_labels_names_and_items(tmp_path):
    root = _imagenet_tree(tmp_path / "ds")
    ds = open_dataset(root, "train", image_size=16)
    assert ds.classes == list(COLOURS) and ds.class_names == ["tench", "goldfish", "great white shark"]
    assert len(ds) == 9 and ds.image_size == 16 and ds.bad_files == []
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
        assert _dominant(x) == y  # the colour of the image is its class: labels are right
        assert Path(ds.path_of(i)).parent.name == ds.classes[y]
    val = open_dataset(root, "val", image_size=16)
    assert val.classes == ds.classes and len(val) == 9


@pytest.mark.reliability
def test_bad_files_are_counted_never_mislabelled(tmp_path):
    root = _imagenet_tree(tmp_path / "ds")
    train = root / "train"
    (train / "n01440764" / "empty.JPEG").write_bytes(b"")
    (train / "n01443537" / "html.JPEG").write_text("<html>oops</html>")
    rng = np.random.default_rng(0)
    noisy = np.clip(rng.normal((20, 20, 220), 30, (64, 64, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(train / "n01484850" / "cut.JPEG", format="JPEG", quality=95)
    good = (train / "n01484850" / "cut.JPEG").read_bytes()
    (train / "n01484850" / "cut.JPEG").write_bytes(good[: len(good) // 2])  # header fine, data truncated
    ds = open_dataset(root, "train", image_size=16)
    reasons = {Path(p).name: r for p, r in ds.bad_files}
    assert reasons == {"empty.JPEG": "empty", "html.JPEG": "not_an_image"}  # found by the header probe
    assert len(ds) == 10  # 9 good + the truncated one (its header is valid)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        seen = [ds[i] for i in range(len(ds))]
    assert all(_dominant(x) == y for x, y in seen)  # the substitute carries its own label
    assert any(Path(p).name == "cut.JPEG" and r in ("truncated", "corrupt") for p, r in ds.bad_files)

    full = open_dataset(root, "train", image_size=16, validate="full")
    assert len(full) == 9 and len(full.bad_files) == 3


def test_plain_class_folder_native_small_size(tmp_path):
    for c in ("cat", "dog_house"):
        for k in range(2):
            _jpeg(tmp_path / c / f"{k}.jpg", (100, 100, 100), size=(32, 32))
    ds = open_dataset(tmp_path, "train")
    assert ds.image_size == 32  # small images keep their native size (CIFAR)
    assert ds.class_names == ["cat", "dog house"]
    assert ds[0][0].shape == (3, 32, 32)
    with pytest.raises(DatasetError):  # no validation split: never the training images again
        open_dataset(tmp_path, "val")


def test_class_names_file(tmp_path):
    import json

    for c in ("a", "b"):
        _jpeg(tmp_path / c / "0.jpg", (1, 2, 3))
    (tmp_path / "class_names.json").write_text(json.dumps({"a": "apple"}))
    assert open_dataset(tmp_path).class_names == ["apple", "b"]


def _flat_val(root: Path, labels: list[str]) -> list[Path]:
    files = []
    for i, synset in enumerate(labels):
        files.append(_jpeg(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", COLOURS[synset]))
    return files


def test_ilsvrc_val_with_csv_solution(tmp_path):
    root = tmp_path / "ilsvrc"
    labels = ["n01484850", "n01440764", "n01443537", "n01440764"]
    _flat_val(root, labels)
    rows = ["ImageId,PredictionString"] + [
        f"ILSVRC2012_val_{i + 1:08d},{s} 1 2 3 4 {s} 5 6 7 8" for i, s in enumerate(labels)
    ]
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(root, "val", image_size=16)
    assert len(ds.classes) == 1000  # no train/: the standard 1000 synsets
    assert [y for _, y in ds.samples] == [IMAGENET_SYNSET_INDEX[s] for s in labels]
    assert ds.class_names[ds.samples[0][1]] == "great white shark"


def test_ilsvrc_val_devkit_ids(tmp_path):
    root = tmp_path / "ilsvrc"
    labels = ["n01443537", "n01484850", "n01440764"]
    _flat_val(root, labels)
    _jpeg(root / "val" / "ILSVRC2012_val_00000099.JPEG", (0, 0, 0)).unlink()
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    # devkit ids are NOT the sorted order: here id 1 is goldfish, 2 great white shark, 3 tench
    (devkit / "map_clsloc.txt").write_text("n01443537 1 goldfish\nn01484850 2 great_white_shark\nn01440764 3 tench\n")
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n")
    # with a train/ split, val labels index the train classes
    for c, colour in COLOURS.items():
        _jpeg(root / "train" / c / "0.JPEG", colour)
    ds = open_dataset(root, "val", image_size=16)
    assert ds.classes == list(COLOURS)
    assert [ds.classes[y] for _, y in ds.samples] == labels
    assert all(_dominant(ds[i][0]) == ds[i][1] for i in range(len(ds)))


def _meta_mat(path: Path, rows: list[tuple[int, str, str, int]]) -> None:
    """A meta.mat shaped like the ILSVRC2012 devkit's: a struct array ``synsets`` with the
    leaf synsets (num_children 0) and inner nodes of the hierarchy."""
    import numpy as np
    from scipy.io import savemat

    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array([tuple(r) for r in rows], dtype=fields).reshape(-1, 1)  # 1860x1 in the devkit
    savemat(str(path), {"synsets": synsets})


def test_ilsvrc_val_devkit_meta_mat(tmp_path):
    """The original 2012 devkit has no map_clsloc.txt: its ids come from data/meta.mat."""
    pytest.importorskip("scipy")
    root = tmp_path / "ilsvrc"
    labels = ["n01484850", "n01440764", "n01443537", "n01440764"]
    _flat_val(root, labels)
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    _meta_mat(devkit / "meta.mat", [
        (1, "n01440764", "tench, Tinca tinca", 0),
        (2, "n01443537", "goldfish, Carassius auratus", 0),
        (3, "n01484850", "great white shark", 0),
        (1001, "n00001740", "entity", 3),  # an inner node: not a class
    ])
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("3\n1\n2\n1\n")
    ds = open_dataset(root, "val", image_size=16)
    assert len(ds.classes) == 1000
    assert [ds.classes[y] for _, y in ds.samples] == labels


@pytest.mark.reliability
def test_ilsvrc_val_damaged_meta_mat_is_named(tmp_path):
    pytest.importorskip("scipy")
    root = tmp_path / "ilsvrc"
    _flat_val(root, ["n01440764"])
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    (root / "meta.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(DatasetError, match=r"meta\.mat"):
        open_dataset(root, "val")
    import scipy.io

    scipy.io.savemat(str(root / "meta.mat"), {"something_else": [1, 2]})  # a MAT file, not the devkit's
    with pytest.raises(DatasetError, match="not the ILSVRC2012 devkit"):
        open_dataset(root, "val")


def test_ilsvrc_val_without_id_table_is_a_clear_error(tmp_path):
    root = tmp_path / "ilsvrc"
    _flat_val(root, ["n01440764"])
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    with pytest.raises(DatasetError, match="id-to-synset"):
        open_dataset(root, "val")


@pytest.mark.reliability
def test_open_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        open_dataset(tmp_path / "empty")
    _imagenet_tree(tmp_path / "ds", per_class=1)
    with pytest.raises(DatasetError):
        open_dataset(tmp_path / "ds", "test")
    extra = tmp_path / "ds" / "val" / "n99999999"
    _jpeg(extra / "0.JPEG", (0, 0, 0))
    with pytest.raises(DatasetError, match="not in the training classes"):
        open_dataset(tmp_path / "ds", "val")


def test_stats_sampled_then_stored(tmp_path):
    root = _imagenet_tree(tmp_path / "ds", per_class=2)
    ds = open_dataset(root, "val", image_size=16)
    est = ds.stats  # estimated from the *training* split
    assert est.count == 6 and est.mean_image.shape == (3, 16, 16)
    assert torch.allclose(est.mean, torch.full((3,), (220 + 20 + 20) / 3), atol=3)
    stored = DatasetStats.imagenet_fallback()
    stored.mean_image = torch.zeros(3, 16, 16)
    save_stats_file(stored, root / STATS_FILE)
    assert torch.equal(open_dataset(root, "val", image_size=16).stats.mean, stored.mean)
    (root / STATS_FILE).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="statistics"):
        _ = open_dataset(root, "train", image_size=16).stats


def test_get_batch(tmp_path):
    ds = open_dataset(_imagenet_tree(tmp_path / "ds", per_class=1), "train", image_size=8)
    x, y = ds.get_batch([2, 0])
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [2, 0]
    assert np.array_equal(x[1].numpy(), ds[0][0].numpy())
