"""Hostile data: runs of bad files, symlink loops, odd-sized images, edited prepared indexes,
and evaluation that must count only the images it actually read.

Every case here is a bad input a user can hand the toolkit; each test fails on the code
before its fix (see the commit that added it).
"""

from __future__ import annotations

import os
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


# --------------------------------------------------------------------- class 3: evaluation counts only what it read


def _tiny_model(num_classes: int = 3):
    from alexnet import create_model
    from alexnet.checkpoint import ModelMeta
    from alexnet.data.stats import DatasetStats

    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(num_classes)]
    meta = ModelMeta("alexnet_small", num_classes, classes, classes, 16, 16, "channel", DatasetStats.imagenet_fallback(),
                     {"width": 0.125, "fc_dim": 16})
    return create_model("alexnet_small", num_classes, width=0.125, fc_dim=16).eval(), meta


def _noisy(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    """A readable JPEG whose colour is its class, with enough noise that predictions vary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(colour, 60, (20, 20, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, format="JPEG", quality=95)
    return path


@pytest.mark.parametrize(
    ("good", "bad", "workers", "held_out"),
    [
        ((14, 13, 13), (40, 0, 0), 0, False),  # the case: 40 readable + 40 truncated
        ((5, 9, 2), (1, 7, 3), 1, False),  # scattered, decoded in a worker process
        ((6, 6, 6), (0, 0, 9), 0, True),  # through a held-out subset (report's --max-eval)
    ],
)
def test_evaluation_counts_only_images_read(tmp_path, figure, good, bad, workers, held_out):
    from alexnet.data.splits import HeldOut
    from alexnet.evaluation import class_probs, evaluate

    root = tmp_path / "ds"
    for c in range(3):
        for k in range(good[c]):
            _noisy(root / f"c{c}" / f"g{k:02d}.jpg", COLOURS[c], seed=100 * c + k)
        for k in range(bad[c]):
            _truncated(root / f"c{c}" / f"b{k:02d}.jpg", seed=k)
    ds = open_dataset(root, "train", image_size=16)
    if held_out:
        ds = HeldOut(ds, list(range(len(ds)))[::-1])  # every item, in another order
    model, meta = _tiny_model()
    result = evaluate((model, meta), ds, batch_size=7, device="cpu", num_workers=workers)

    readable = [i for i in range(len(ds)) if Path(ds.path_of(i)).name.startswith("g")]
    n_bad = sum(bad)
    assert result.num_images == len(readable) == sum(good)  # no substitute counted
    assert result.num_skipped == n_bad and result.confusion.sum() == sum(good)
    assert sorted(Path(p).name for p, _ in result.skipped) == sorted(
        Path(ds.path_of(i)).name for i in range(len(ds)) if i not in readable
    )
    assert all(r in ("truncated", "corrupt") for _, r in result.skipped)
    assert result.indices.tolist() == readable  # row r is dataset item indices[r]
    # the truth: the figures over exactly the readable images
    items = [ds[i] for i in readable]
    images, labels = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    top1 = class_probs(model, meta, images, device="cpu").argmax(1)
    assert result.top1 == pytest.approx((top1 == labels).float().mean().item())
    assert torch.equal(result.labels, labels)
    d = result.to_dict()
    assert d["num_images"] == sum(good) and d["num_skipped"] == n_bad and len(d["skipped"]) == n_bad
    if n_bad:
        assert f"{n_bad} unreadable" in result.format_table()
    assert {p for p, _ in result.skipped} <= {p for p, _ in ds.bad_files}  # where the CLI looks too
    figure(f"images counted / readable / unreadable ({sum(good)}+{n_bad})", [result.num_images, sum(good), n_bad])


def test_evaluation_of_nothing_readable_says_so(tmp_path):
    from alexnet.errors import EvaluationError
    from alexnet.evaluation import evaluate

    root = tmp_path / "ds"
    for c in range(3):
        _truncated(root / f"c{c}" / "b.jpg", seed=c)
    ds = open_dataset(root, "train", image_size=16)
    with pytest.raises(EvaluationError, match="none of the dataset's 3 images could be read"):
        evaluate(_tiny_model(), ds, device="cpu")


# --------------------------------------------------------------------- class 2: symlink loops


def _three_classes(root: Path, per_class: int = 3) -> Path:
    for c in range(3):
        for k in range(per_class):
            _jpeg(root / f"c{c}" / f"{k}.jpg", COLOURS[c])
    return root


LINKS = {  # link path (relative to the dataset root) -> target, as `ln -s TARGET PATH` would make it
    "one loop": {"c0/loop": "."},
    "two loops (the issue's case)": {"c1/loop": ".", "c1/loop2": "."},
    "loops in every class": {f"c{c}/{n}": "." for c in range(3) for n in ("a", "b", "c")},
    "nested loop to the class folder": {"c0/sub/deeper/up": "../.."},
    "loop to a sub-folder's parent": {"c2/sub/up": ".."},
    "link to the dataset root": {"c0/root": ".."},
    "link above the dataset root": {"c1/above": "../.."},
    "link into another class": {"c0/other": "../c2"},
    "both classes linked to each other": {"c0/to1": "../c1", "c1/to0": "../c0"},
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(LINKS))
def test_symlink_loops_count_each_real_file_once(tmp_path, figure, case):
    root = _three_classes(tmp_path / "parent" / "ds")
    for link, target in LINKS[case].items():
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / link)
    ds = open_dataset(root, "train", image_size=8)
    per_class = np.bincount(ds.targets, minlength=3).tolist()
    assert per_class == [3, 3, 3] and len(ds) == 9
    assert len({os.path.realpath(p) for p, _ in ds.samples}) == 9  # each real file once
    assert all(_dominant(ds[i][0]) == ds[i][1] for i in range(len(ds)))  # in its own class
    figure(f"images counted with links: {case}", len(ds))


def test_the_same_file_from_two_classes_counts_once_at_its_home(tmp_path):
    """A file link from one class into another: the file belongs where it really lives;
    a file reachable only through links counts in the first class; the rest are duplicates."""
    root = _three_classes(tmp_path / "ds")
    os.symlink("../c2/0.jpg", root / "c0" / "borrowed.jpg")  # c2's image linked from c0
    os.link(root / "c1" / "1.jpg", root / "c0" / "hard.jpg")  # a hard link: same file, no link path
    outside = _jpeg(tmp_path / "elsewhere" / "x.jpg", COLOURS[1])
    os.symlink(outside, root / "c2" / "x.jpg")
    os.symlink(outside, root / "c1" / "x.jpg")
    ds = open_dataset(root, "train", image_size=8)
    counted = {str(Path(p).relative_to(root)): ds.classes[y] for p, y in ds.samples}
    assert counted["c2/0.jpg"] == "c2" and "c0/borrowed.jpg" not in counted  # its real home wins
    assert counted["c0/hard.jpg"] == "c0" and "c1/1.jpg" not in counted  # no link: first class
    assert counted["c1/x.jpg"] == "c1" and "c2/x.jpg" not in counted  # only via links: first class
    assert len(ds) == 10
    dups = sorted(str(Path(p).relative_to(root)) for p, r in ds.bad_files if r == "duplicate")
    assert dups == ["c0/borrowed.jpg", "c1/1.jpg", "c2/x.jpg"]


def test_a_class_folder_linked_to_another_is_all_duplicates(tmp_path):
    root = _three_classes(tmp_path / "ds")
    os.symlink("c0", root / "c3")
    ds = open_dataset(root, "train", image_size=8)
    assert ds.classes == ["c0", "c1", "c2", "c3"] and np.bincount(ds.targets).tolist() == [3, 3, 3]
    assert sorted(Path(p).name for p, r in ds.bad_files if r == "duplicate") == ["0.jpg", "1.jpg", "2.jpg"]


# --------------------------------------------------------------------- class 12: one odd image decides nothing


SIZE_CASES = {  # name: ([(side, count), ...], expected S)
    "a 16 px icon among CIFAR images": ([(32, 12), (16, 1)], 32),
    "one 500 px photo among CIFAR images": ([(32, 12), (500, 1)], 32),
    "a few photos among many CIFAR images": ([(32, 90), (300, 5), (20, 5)], 32),
    "64 px ImageNet with odd ones": ([(64, 10), (8, 2), (1000, 2)], 64),
    "photos with a few thumbnails": ([(300, 9), (32, 3)], 256),
    "photos with thumbnails of one size": ([(400, 7), (48, 6)], 256),
    "all different small sides: the median": ([(20, 1), (24, 1), (28, 1), (40, 1), (60, 1)], 28),
}


@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_the_stored_size_is_decided_by_the_majority(tmp_path, caplog, figure, case):
    import logging

    sizes, expected = SIZE_CASES[case]
    root = tmp_path / "ds"
    k = 0
    for side, count in sizes:
        for _ in range(count):  # spread over two classes, odd images mixed in by name
            _jpeg(root / f"c{k % 2}" / f"{(k * 7919) % 1000:03d}_{k}.jpg", COLOURS[k % 2], (side, side + 3))
            k += 1
    with caplog.at_level(logging.INFO, logger="alexnet"):
        ds = open_dataset(root, "train")
    assert ds.image_size == expected
    assert ds.size_note.startswith(f"S={expected}:")
    assert any(ds.size_note in r.getMessage() for r in caplog.records)  # said, not printed
    assert ds[0][0].shape == (3, expected, expected)
    figure(f"stored side: {case}", ds.image_size)


def test_a_given_size_is_kept_and_said(tmp_path):
    from alexnet.data.dataset import describe_dataset

    root = tmp_path / "ds"
    for k in range(4):
        _jpeg(root / "a" / f"{k}.jpg", COLOURS[0], (32, 32))
    assert open_dataset(root, "train", image_size=16).size_note == "S=16 (given)"
    info = describe_dataset(root)
    assert info.splits[0].size_note.startswith("S=32: the most common shorter side of 4 probed images")


# --------------------------------------------------------------------- class 10: verify every file of a prepared dataset


@pytest.fixture(scope="module")
def prepared_src(tmp_path_factory) -> Path:
    from alexnet.data.prepared import prepare_dataset

    src = tmp_path_factory.mktemp("hostile_src")
    for split, n in (("train", 4), ("val", 2)):
        for c in range(3):
            for k in range(n):
                _noisy(src / split / f"c{c}" / f"{k}.jpg", COLOURS[c], seed=10 * c + k)
    out = tmp_path_factory.mktemp("hostile_prep") / "raw"
    prepare_dataset(src, out, size=8, fmt="raw", workers=1, shard_size=5, progress=False)
    return out


def _copy(prepared: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(prepared, tmp_path / "copy"))


def _swap_labels(root: Path, split: str) -> str:
    name = f"{split}.labels.npy"
    labels = np.load(root / name)
    i, j = 0, int(np.nonzero(labels != labels[0])[0][0])
    labels[[i, j]] = labels[[j, i]]  # still in range: only the checksum can tell
    np.save(root / name, labels)
    return name


def _swap_items(root: Path, split: str) -> str:
    name = f"{split}.items.npy"
    items = np.load(root / name)
    items[[0, 1]] = items[[1, 0]]  # two images trade places inside their shard
    np.save(root / name, items)
    return name


def _rename_source(root: Path, split: str) -> str:
    import json

    name = f"{split}.sources.json"
    sources = json.loads((root / name).read_text())
    sources[0] = sources[0] + ".elsewhere"
    (root / name).write_text(json.dumps(sources))
    return name


def _flip_stats(root: Path, split: str) -> str:
    data = bytearray((root / "stats.safetensors").read_bytes())
    data[-1] ^= 0x01
    (root / "stats.safetensors").write_bytes(bytes(data))
    return "stats.safetensors"


def _rename_class(root: Path, split: str) -> str:
    import json

    index = json.loads((root / "index.json").read_text())
    index["class_names"][0] = "not what it was"
    (root / "index.json").write_text(json.dumps(index))
    return "index.json"


def _forget_bad_file(root: Path, split: str) -> str:
    import json

    index = json.loads((root / "index.json").read_text())
    index["splits"][split]["bad_files"].append(["/somewhere/x.jpg", "corrupt"])
    (root / "index.json").write_text(json.dumps(index, indent=4))
    return "index.json"


EDITS = [_swap_labels, _swap_items, _rename_source, _flip_stats, _rename_class, _forget_bad_file]


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("edit", EDITS, ids=[e.__name__ for e in EDITS])
def test_verify_sees_an_edit_of_any_file(prepared_src, tmp_path, capsys, edit, split):
    from alexnet.cli import main as cli
    from alexnet.data.dataset import describe_dataset
    from alexnet.data.prepared import PreparedDataset, ShardCorruptError

    root = _copy(prepared_src, tmp_path)
    PreparedDataset(root, split).verify()  # nothing wrong before the edit
    name = edit(root, split)
    ds = open_dataset(root, split)  # the edit is self-consistent: opening cannot tell
    with pytest.raises(ShardCorruptError, match=name.replace(".", r"\.")):
        ds.verify()
    with pytest.raises(ShardCorruptError):
        describe_dataset(root, verify=True)
    assert cli(["data", "info", str(root), "--verify"]) == 2
    assert name in capsys.readouterr().err


def test_a_reformatted_index_still_verifies(prepared_src, tmp_path):
    import json

    root = _copy(prepared_src, tmp_path)
    index = json.loads((root / "index.json").read_text())
    (root / "index.json").write_text(json.dumps(dict(reversed(list(index.items()))), indent=3))  # same content
    assert open_dataset(root, "train").verify() == []


def test_an_index_without_checksums_opens_and_says_what_it_could_not_check(prepared_src, tmp_path, capsys):
    import json

    from alexnet.cli import main as cli
    from alexnet.data.dataset import describe_dataset

    root = _copy(prepared_src, tmp_path)
    index = json.loads((root / "index.json").read_text())
    for key in ("index_sha256", "stats_sha256"):
        del index[key]
    for info in index["splits"].values():
        del info["files"]
    (root / "index.json").write_text(json.dumps(index, indent=1))  # as the previous version wrote it
    ds = open_dataset(root, "train")
    assert ds.verify() == ["train.items.npy", "train.labels.npy", "train.sources.json", "stats.safetensors", "index.json"]
    verified = describe_dataset(root, verify=True).splits[0].verified
    assert "could not" not in verified and "except train.items.npy" in verified and "older" in verified
    assert cli(["data", "info", str(root), "--verify"]) == 0
    assert "except" in capsys.readouterr().out


def test_stored_statistics_keep_the_checksums_right(prepared_src, tmp_path):
    from alexnet.data.dataset import store_stats

    root = _copy(prepared_src, tmp_path)
    store_stats(root, max_images=3)  # rewrites stats.safetensors and the index
    assert open_dataset(root, "train").verify() == []


@pytest.mark.parametrize(
    "labels",
    [np.full(6, 3), np.full(6, -1), np.array([0, 1, 2, 0, 1, 2**40]), np.array([0, 1, 2, 0, 1, 1.5]),
     np.array([0, 1, 2, 0, 1, 2], np.float32)],
    ids=["== classes", "negative", "huge", "fraction", "float"],
)
def test_labels_that_name_no_class_are_refused_at_open(prepared_src, tmp_path, labels):
    root = _copy(prepared_src, tmp_path)
    np.save(root / "val.labels.npy", labels)
    with pytest.raises(DatasetError, match="labels"):
        open_dataset(root, "val")
