"""Evaluation and prediction on a model trained inside the test: the figures equal a direct
computation from the model's outputs, ten-crop and ensembles average the softmax as the paper
did, bad inputs give clear errors, and torchvision weights work through alexnet_owt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_analysis_support as support
import torch
import torch.nn.functional as F
from PIL import Image
from test_analysis_support import NUM_CLASSES, VAL_PER_CLASS, TinyRun

from alexnet.checkpoint import load_model
from alexnet.cli import main
from alexnet.data import open_dataset
from alexnet.data.imagenet import IMAGENET_SYNSETS
from alexnet.evaluation import (
    EvalResult,
    ImageLoadError,
    class_probs,
    evaluate,
    fit_images,
    label_map,
    predict_files,
    predict_images,
)

# Session fixtures shared with the other analysis test modules (trained once per session).
tiny_run = support.tiny_run
torchvision_weights = support.torchvision_weights


def _all(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


@pytest.fixture(scope="module")
def loaded(tiny_run: TinyRun):
    model, meta = load_model(tiny_run.checkpoint)
    return model, meta, open_dataset(tiny_run.data, "val")


def test_evaluate_matches_direct_computation(loaded) -> None:
    model, meta, val = loaded
    result = evaluate((model, meta), val, crops=1, batch_size=5, device="cpu")
    images, labels = _all(val)
    probs = class_probs(model, meta, images, device="cpu")
    top5 = probs.topk(min(5, NUM_CLASSES), 1).indices
    assert result.num_images == len(val) == NUM_CLASSES * VAL_PER_CLASS
    assert result.top1 == pytest.approx((top5[:, 0] == labels).float().mean().item())
    assert result.top5 == pytest.approx((top5 == labels[:, None]).any(1).float().mean().item())
    assert result.top1_error == pytest.approx(1 - result.top1)
    # Confusion matrix: rows are true classes, every image counted once, diagonal = top-1 hits.
    assert result.confusion.sum() == len(val)
    assert result.confusion.sum(1).tolist() == [VAL_PER_CLASS] * NUM_CLASSES
    assert result.confusion.diagonal().sum() == (top5[:, 0] == labels).sum()
    expected = [((top5[:, 0] == c) & (labels == c)).sum().item() / VAL_PER_CLASS for c in range(NUM_CLASSES)]
    assert result.per_class == pytest.approx(expected)
    # Saved top-5 per image (for reports) are the model's.
    assert torch.equal(result.top_idx, top5) and torch.equal(result.labels, labels)


def test_ten_crop_averages_softmax_over_the_ten_patches(loaded) -> None:
    model, meta, val = loaded
    images, _ = _all(val)
    assert meta.input_size < meta.image_size  # the ten patches differ
    patches = meta.eval_transform(ten_crop=True)(images)  # [B, 10, 3, c, c]
    with torch.no_grad():
        manual = torch.stack([F.softmax(model(patches[:, i]), 1) for i in range(10)], 1).mean(1)
    got = class_probs(model, meta, images, crops=10, device="cpu")
    torch.testing.assert_close(got, manual, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, class_probs(model, meta, images, crops=1, device="cpu"))
    result = evaluate((model, meta), val, crops=10, device="cpu")
    assert result.crops == 10 and result.num_images == len(val)


def test_ensemble_averages_softmax_and_needs_matching_classes(loaded, tiny_run: TinyRun) -> None:
    model, meta, val = loaded
    other, other_meta = load_model(tiny_run.last)
    images, labels = _all(val)
    avg = (class_probs(model, meta, images, device="cpu") + class_probs(other, other_meta, images, device="cpu")) / 2
    result = evaluate([(model, meta), (other, other_meta)], val, device="cpu")
    assert result.top1 == pytest.approx((avg.argmax(1) == labels).float().mean().item())

    import copy

    renamed = copy.deepcopy(other_meta)
    renamed.classes = [c + "_x" for c in renamed.classes]
    with pytest.raises(ValueError, match="different classes"):
        evaluate([(model, meta), (other, renamed)], val, device="cpu")


def test_label_map_subset_and_unknown_classes() -> None:
    assert label_map(["b", "d"], ["a", "b", "c", "d"]).tolist() == [1, 3]
    with pytest.raises(ValueError, match="unknown to the model"):
        label_map(["b", "zebra"], ["a", "b"])


def test_fit_images_brings_any_size_to_the_stored_side() -> None:
    x = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    out = fit_images(x, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    same = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert fit_images(same, 32) is same


def test_predict_images_and_per_file_errors(loaded, tiny_run: TinyRun, tmp_path: Path) -> None:
    model, meta, val = loaded
    paths = [val.path_of(0), val.path_of(len(val) - 1)]
    from_paths = predict_images(model, meta, paths)
    from_tensors = predict_images(model, meta, [val[0][0], val[len(val) - 1][0]])
    assert len(from_paths) == 2 and len(from_paths[0]) == min(5, NUM_CLASSES)
    for a, b in zip(from_paths, from_tensors, strict=True):
        assert [p.index for p in a] == [p.index for p in b]
        assert [p.prob for p in a] == pytest.approx([p.prob for p in b], abs=1e-6)
    top = from_paths[0]
    assert all(top[i].prob >= top[i + 1].prob for i in range(len(top) - 1))
    assert top[0].class_id == meta.classes[top[0].index] and top[0].name == meta.class_names[top[0].index]

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"<html>not an image</html>")
    with pytest.raises(ImageLoadError, match=r"broken\.jpg"):
        predict_images(model, meta, [bad])
    out = predict_files(model, meta, [paths[0], bad, tmp_path / "missing.png"])
    assert "top" in out[0] and "error" in out[1] and "error" in out[2]
    assert "not_an_image" in out[1]["error"] and "missing.png" in out[2]["error"]


def test_predict_turns_a_phone_photo_upright(tmp_path: Path) -> None:
    """A file stored sideways with EXIF orientation 6 is loaded as the upright picture."""
    import numpy as np
    from PIL import Image

    from alexnet.evaluation import load_image

    upright = np.zeros((40, 40, 3), np.uint8)
    upright[:8] = 255  # a white band at the top of the picture as seen
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # the camera kept it sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and says: rotate 90 degrees clockwise to view
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    loaded = load_image(path, 40)
    assert torch.equal(loaded, torch.from_numpy(upright).permute(2, 0, 1))
    assert torch.equal(load_image(path.read_bytes(), 40), loaded)  # uploads too


def test_result_json_and_table(loaded) -> None:
    model, meta, val = loaded
    result = evaluate((model, meta), val, device="cpu", names=["m.pt"])
    d = json.loads(json.dumps(result.to_dict()))
    assert d["top5_error"] == pytest.approx(result.top5_error)
    assert len(d["confusion"]) == NUM_CLASSES and sum(map(sum, d["confusion"])) == len(val)
    assert {c["class"] for c in d["per_class"]} == set(meta.classes)
    table = result.format_table()
    assert "top-1" in table and "top-5" in table and "m.pt" in table


def test_empty_result_is_an_error(loaded) -> None:
    model, meta, val = loaded
    from alexnet.data.splits import HeldOut

    with pytest.raises(ValueError, match="no images"):
        evaluate((model, meta), HeldOut(val, []), device="cpu")


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate_json_and_errors(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--checkpoint", str(tiny_run.checkpoint), "--data", str(tiny_run.data),
               "--crops", "10", "--ensemble", str(tiny_run.last), "--json", str(out), "--workers", "0"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["crops"] == 10 and doc["num_images"] == NUM_CLASSES * VAL_PER_CLASS and len(doc["models"]) == 2
    assert "top-5" in capsys.readouterr().out

    not_ck = tmp_path / "image.jpg"
    not_ck.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["evaluate", "--checkpoint", str(not_ck), "--data", str(tiny_run.data)]) == 2
    assert main(["evaluate", "--checkpoint", str(tiny_run.checkpoint), "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_cli_predict_reports_bad_files_and_goes_on(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    good = next((tiny_run.data / "val").glob("*/*.jpg"))
    png = tmp_path / "rgba.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 4), dtype=np.uint8)).save(png)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[:100])
    rc = main(["predict", "--checkpoint", str(tiny_run.checkpoint), str(good), str(bad), str(png), "--json"])
    captured = capsys.readouterr()
    assert rc == 1
    doc = json.loads(captured.out)
    assert [("top" in d, "error" in d) for d in doc] == [(True, False), (False, True), (True, False)]
    assert abs(sum(p["prob"] for p in doc[0]["top"]) - 1) < 1e-4  # 4 classes: top-5 is all of them
    assert main(["predict", "--checkpoint", str(tiny_run.checkpoint), str(good), "--crops", "10"]) == 0


# --------------------------------------------------------------------------- torchvision weights


def test_torchvision_weights_evaluate_both_imagenet_layouts_and_predict(torchvision_weights: Path, tmp_path: Path) -> None:
    """A torchvision alexnet state dict loads as alexnet_owt with ImageNet classes and works in
    evaluate on both ImageNet validation layouts (class folders; the official flat folder with
    its ground-truth CSV), giving identical results, and in predict."""
    model, meta = load_model(torchvision_weights)
    assert meta.model == "alexnet_owt" and meta.classes == list(IMAGENET_SYNSETS)
    folders, flat = tmp_path / "folders" / "val", tmp_path / "flat" / "val"
    flat.mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    rng = np.random.default_rng(0)
    for n, synset in enumerate((IMAGENET_SYNSETS[1], IMAGENET_SYNSETS[7])):
        (folders / synset).mkdir(parents=True)
        for i in range(2):
            image = Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))
            image.save(folders / synset / f"ILSVRC2012_val_{2 * n + i:08d}.JPEG", quality=95)
            image.save(flat / f"ILSVRC2012_val_{2 * n + i:08d}.JPEG", quality=95)
            rows.append(f"ILSVRC2012_val_{2 * n + i:08d},{synset} 1 1 50 50")
    (tmp_path / "flat" / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")

    by_folder = evaluate((model, meta), open_dataset(folders, None), device="cpu", batch_size=4)
    by_csv = evaluate((model, meta), open_dataset(tmp_path / "flat", "val"), device="cpu", batch_size=4)
    for result in (by_folder, by_csv):
        assert isinstance(result, EvalResult) and result.num_images == 4
        assert result.labels.tolist() == [1, 1, 7, 7]  # mapped into the 1000-class space
    assert torch.equal(by_folder.top_idx, by_csv.top_idx) and by_folder.top5 == by_csv.top5
    preds = predict_images(model, meta, [folders / IMAGENET_SYNSETS[1] / "ILSVRC2012_val_00000000.JPEG"])
    assert len(preds[0]) == 5 and preds[0][0].class_id in IMAGENET_SYNSETS


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "imagenet-samples").is_dir(), reason="shared ImageNet samples absent")
def test_predict_real_imagenet_photos(torchvision_weights: Path) -> None:
    """Full-size real JPEGs go through the decoder and the 256 -> 224 pipeline of predict."""
    model, meta = load_model(torchvision_weights)
    files = sorted((SHARED_DATA / "imagenet-samples").glob("*.JPEG"))[:3]
    results = predict_files(model, meta, files)
    assert [("top" in r) for r in results] == [True] * len(files)
    for r in results:
        probs = [p.prob for p in r["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
