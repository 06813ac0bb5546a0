"""The unit atlas: receptive fields from the architecture (checked by perturbing pixels), top hits
that really are each channel's strongest, patches cut where the hits are, measured per-layer
statistics, storage keyed by the weights' digest, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_analysis_support as support
import torch
from test_analysis_support import TinyRun

from alexnet.analysis.atlas import (
    CONV_LAYERS,
    GREY,
    Atlas,
    ReceptiveField,
    build_atlas,
    centre_crop,
    cut_patch,
    ensure_atlas,
    load_atlas,
    patch_statistics,
    purity,
    receptive_fields,
)
from alexnet.checkpoint import imagenet_meta, load_model
from alexnet.cli import main
from alexnet.data.splits import open_splits
from alexnet.errors import IndexFormatError
from alexnet.models import create_model

tiny_run = support.tiny_run


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: with two threads on a shared 2-core machine each op waits on the
    other thread far longer than it computes (measured: 2.7 ms vs 4 us per small softmax)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_run: TinyRun):
    model, meta = load_model(tiny_run.checkpoint)
    train, val, _ = open_splits(tiny_run.data, "val", 0.1)
    return model, meta, train, val


@pytest.fixture(scope="module")
def atlas(tiny) -> Atlas:
    model, meta, train, val = tiny
    return build_atlas(model, meta, train, val, sample=None, batch_size=16, top_k=5)


# --------------------------------------------------------------------------- receptive fields


@pytest.mark.parametrize("name", ["alexnet", "alexnet_owt"])
def test_receptive_fields_of_the_imagenet_nets_are_the_known_ones(name: str) -> None:
    """conv1 11/4 with padding 2, then pool 3/2 ... conv5: 163 px every 16 px (the textbook figure)."""
    with torch.device("meta"):
        model = create_model(name)
    rfs = receptive_fields(model.to_empty(device="cpu"), 224)
    assert [(r.size, r.stride, r.start) for r in rfs.values()] == [
        (11, 4, -2), (51, 8, -18), (99, 16, -34), (131, 16, -50), (163, 16, -66)
    ]


def test_receptive_field_is_exactly_the_pixels_a_unit_sees() -> None:
    """A pixel just outside the computed field leaves the unit unchanged; a strip just inside changes it."""
    torch.manual_seed(0)
    model = create_model("alexnet_small", num_classes=3, width=0.25, norm="lrn", input_size=96).eval().double()
    rfs = receptive_fields(model, 96)
    x = torch.rand(1, 3, 96, 96, dtype=torch.float64)
    for name, rf in rfs.items():
        y0 = x0 = 2  # a unit whose field lies partly inside the image
        top, left, size = rf.box(y0, x0)
        base = model.forward_layers(x, [name])[name][0, :, y0, x0]
        for edge in ("bottom", "right"):
            inside, outside = x.clone(), x.clone()
            if edge == "bottom":
                row = top + size - 1
                assert row + 1 < 96, name
                inside[..., row, :] += 5.0
                outside[..., row + 1 :, :] += 5.0
            else:
                col = left + size - 1
                assert col + 1 < 96, name
                inside[..., :, col] += 5.0
                outside[..., :, col + 1 :] += 5.0
            out_act = model.forward_layers(outside, [name])[name][0, :, y0, x0]
            in_act = model.forward_layers(inside, [name])[name][0, :, y0, x0]
            assert torch.equal(out_act, base), (name, edge, "a pixel outside the field changed the unit")
            assert not torch.equal(in_act, base), (name, edge, "the field's last row/column did not matter")


def test_cut_patch_copies_inside_and_greys_outside() -> None:
    image = torch.arange(3 * 8 * 8, dtype=torch.int64).remainder(250).to(torch.uint8).view(3, 8, 8)
    patch = cut_patch(image, ReceptiveField(size=5, stride=2, start=-2), 0, 1)  # rows -2..2, cols 0..4
    assert patch.shape == (3, 5, 5)
    assert torch.equal(patch[:, 2:, :], image[:, 0:3, 0:5])
    assert (patch[:, :2] == GREY).all()


# --------------------------------------------------------------------------- the atlas


def test_top_hits_are_each_channels_strongest_and_their_patches_are_cut_there(tiny, atlas: Atlas) -> None:
    model, meta, train, _ = tiny
    crops = centre_crop(torch.stack([train[i][0] for i in range(len(train))]), meta)
    x = meta.eval_transform()(torch.stack([train[i][0] for i in range(len(train))]))
    with torch.no_grad():
        acts = model.forward_layers(x, list(CONV_LAYERS))
    for name in CONV_LAYERS:
        la = atlas.layers[name]
        a = acts[name]
        best = a.flatten(2).max(2).values  # [N, C]: each image's strongest response per channel
        expected = best.topk(la.values.shape[1], dim=0).values.T  # [C, K]
        torch.testing.assert_close(la.values, expected, rtol=1e-4, atol=1e-5)
        for ch in (0, la.channels - 1):
            hits = [i for i, v in zip(la.images[ch].tolist(), la.values[ch].tolist(), strict=True) if v > 0]
            assert len(set(hits)) == len(hits) and -1 not in hits  # different images
            assert (la.images[ch, len(hits) :] == -1).all()  # a zero response is no hit
            for r in range(len(hits)):
                i, (y, xx) = int(la.images[ch, r]), la.locations[ch, r].tolist()
                assert float(a[i, ch, y, xx]) == pytest.approx(float(la.values[ch, r]), rel=1e-4, abs=1e-5)
                assert int(la.labels[ch, r]) == train[i][1]
                if la.rf.size <= la.patches.shape[-1]:  # stored at full size: exactly the field
                    assert torch.equal(la.patches[ch, r], cut_patch(crops[i], la.rf, y, xx))


def test_layer_summary_is_measured_and_complete(atlas: Atlas) -> None:
    for name, la in atlas.layers.items():
        s = la.summary
        shares = s["oriented_edge"] + s["colour_blob"] + s["colour_edge"] + s["other"]
        assert shares == pytest.approx(1.0)
        assert 0 < s["purity"] <= 1 and 0 < s["baseline"]["purity"] <= 1
        assert s["receptive_field"] == la.rf.size
        assert set(la.unit_stats) == {"coherence", "colour", "luminance", "purity"}
        caption = atlas.caption(name)
        assert caption.startswith(name) and f"{la.rf.size} px" in caption and "%" in caption


def test_patch_statistics_tell_edges_from_colour_blobs() -> None:
    edge = torch.zeros(1, 4, 3, 9, 9, dtype=torch.uint8)
    edge[..., :, 5:] = 220  # a vertical grey edge in every top patch
    blob = torch.full((1, 4, 3, 9, 9), 100, dtype=torch.uint8)
    blob[:, :, 0, 2:7, 2:7] = 250  # a red blob
    stats = patch_statistics(torch.cat([edge, blob]), reference=torch.full((3,), 0.4))
    assert stats["coherence"][0] > 0.99 and stats["colour"][0] < 0.01
    assert stats["colour"][1] > stats["luminance"][1] and stats["colour"][1] > 0.1
    assert stats["coherence"][1] < 0.5


def test_purity_counts_the_most_common_class() -> None:
    assert purity(torch.tensor([[1, 1, 2, 1], [0, 1, 2, 3], [-1, -1, 4, 4]])).tolist() == [0.75, 0.25, 1.0]


def test_atlas_round_trips_through_disk_and_is_keyed_by_the_weights(tiny, atlas: Atlas, tmp_path: Path) -> None:
    model, meta, train, val = tiny
    atlas.save(tmp_path / "a")
    back = Atlas.load(tmp_path / "a")
    for name in CONV_LAYERS:
        for key in ("values", "images", "locations", "labels", "patches"):
            assert torch.equal(getattr(back.layers[name], key), getattr(atlas.layers[name], key)), (name, key)
        assert back.layers[name].rf == atlas.layers[name].rf
    assert back.caption("conv3") == atlas.caption("conv3")
    assert back.ood.threshold == atlas.ood.threshold
    json.dumps(back.to_json())  # what the page gets is plain JSON
    (tmp_path / "a" / "atlas.json").write_text("{")
    with pytest.raises(IndexFormatError):
        Atlas.load(tmp_path / "a")

    first, built = ensure_atlas(model, meta, train, val, root=tmp_path / "cache", sample=30, top_k=3, batch_size=16)
    assert built and first.info["sample"] == 30
    again, built = ensure_atlas(model, meta, train, val, root=tmp_path / "cache", sample=30, top_k=3, batch_size=16)
    assert not built and torch.equal(again.layers["conv1"].values, first.layers["conv1"].values)
    other = create_model(meta.model, num_classes=meta.num_classes, **meta.options).eval()
    assert load_atlas(other, tmp_path / "cache") is None  # other weights: not this atlas


def test_atlas_of_a_torchvision_layout_model() -> None:
    """alexnet_owt (random weights), 256 px images of two classes: fields up to 163 px, patches downscaled."""
    torch.manual_seed(0)
    model = create_model("alexnet_owt").eval()
    with torch.no_grad():
        model.conv1.bias[0] = -1e6  # conv1 channel 0 never fires
    meta = imagenet_meta("alexnet_owt", 1000)

    class Tiny(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.classes = self.class_names = [meta.classes[0], meta.classes[1]]
            self.image_size = 256

        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int):
            g = torch.Generator().manual_seed(i)
            return torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8, generator=g), i % 2

    a = build_atlas(model, meta, Tiny(), Tiny(), sample=None, top_k=2, patch_size=32, batch_size=4, probe_images=4)
    assert a.layers["conv1"].patches.shape == (64, 2, 3, 11, 11)
    assert a.layers["conv5"].patches.shape == (256, 2, 3, 32, 32) and a.layers["conv5"].rf.size == 163
    assert set(a.probes.probes) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}
    assert a.ood.num_classes == 1000
    assert a.probes.train_images == 4 and a.probes.val_images == 6  # fc6/fc7 kept for the probe subset only
    dead = a.layers["conv1"]
    assert (dead.images[0] == -1).all() and (dead.values[0] == 0).all() and (dead.patches[0] == GREY).all()
    assert dead.summary["dead"] >= 1 and 0 not in dead.showcase(8) and dead.unit(0)["hits"] == []


def test_cli_atlas_builds_once_then_reuses(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    args = ["atlas", "--checkpoint", str(tiny_run.run_dir), "--cache", str(tmp_path), "--sample", "40",
            "--device", "cpu", "--workers", "0", "--batch-size", "16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "built in" in out and "conv1: of" in out and "linear probes" in out and "out-of-class threshold" in out
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["built"] is False and doc["info"]["sample"] == 40
    assert [row["layer"] for row in doc["probes"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]


def test_bench_script_runs(capsys) -> None:
    """bench/seeing.py end to end at a tiny size, so the measurement script cannot rot."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import seeing

    assert seeing.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "atlas: 24 training" in out and "Grad-CAM" in out


def test_what_the_page_gets_for_one_unit(atlas: Atlas) -> None:
    la = atlas.layers["conv2"]
    unit = la.unit(3)
    assert [h["image"] for h in unit["hits"]] == la.images[3].tolist()
    assert unit["hits"][0]["value"] == pytest.approx(float(la.values[3, 0]))
    assert set(unit) >= {"coherence", "colour", "luminance", "purity"}
    tile = la.mosaic(3, side=20)  # 5 patches, 3 per row: 2 rows
    assert tile.shape == (3, 2 * 20 + 1, 3 * 20 + 2) and tile.dtype == torch.uint8
    assert (tile[:, 21:, 41:] == 255).all()  # the sixth place is empty
    with pytest.raises(Exception, match="no channel"):
        la.unit(la.channels)
    assert len(la.showcase(4)) == 4 and la.showcase(4) == sorted(la.showcase(4))
