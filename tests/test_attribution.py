"""Occlusion and Grad-CAM through Captum, checked against the definitions computed by hand;
the cache; the model-randomisation sanity check (Adebayo et al. 2018); feature visualisation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import test_analysis_support as support
import torch
import torch.nn.functional as F
from test_analysis_support import TinyRun

from alexnet.analysis.attribution import Attributor, overlay, randomised, sanity_check, spearman
from alexnet.analysis.featvis import cached_visualisation, visualise
from alexnet.checkpoint import imagenet_meta, load_model
from alexnet.cli import main
from alexnet.data.splits import open_splits
from alexnet.errors import EvaluationError
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
    _, val, _ = open_splits(tiny_run.data, "val", 0.1)
    images = torch.stack([val[i][0] for i in range(0, len(val), max(1, len(val) // 4))][:4])
    return model, meta, images


def test_occlusion_is_the_drop_in_probability_under_a_grey_square(tiny) -> None:
    model, meta, images = tiny
    att = Attributor(model, meta, "cpu")
    window = 7  # 28 px input: 4 x 4 non-overlapping windows, each pixel covered once
    maps = att.occlusion(images[:2], targets=[1, 2], window=window, stride=window)
    x = att.inputs(images[:2])
    with torch.no_grad():
        p0 = F.softmax(model(x), 1)
        for b, target in enumerate((1, 2)):
            for top, left in ((0, 0), (7, 14), (21, 21)):
                hidden = x[b : b + 1].clone()
                hidden[..., top : top + window, left : left + window] = 0.0  # the mean colour, normalised
                drop = p0[b, target] - F.softmax(model(hidden), 1)[0, target]
                region = maps[b].values[top : top + window, left : left + window]
                torch.testing.assert_close(region, torch.full_like(region, float(drop)), atol=1e-5, rtol=1e-4)
    assert maps[0].target == 1 and maps[0].prob == pytest.approx(float(p0[0, 1]), rel=1e-5)


def test_gradcam_matches_its_definition(tiny) -> None:
    """ReLU(sum_c mean(d logit / d A_c) A_c) at conv5 (post-ReLU stage output), upsampled bilinearly."""
    model, meta, images = tiny
    att = Attributor(model, meta, "cpu")
    maps = att.gradcam(images, targets=None, layer="conv5", relu=False)
    x = att.inputs(images)
    out = model.forward_layers(x, ["conv5", "fc8"])  # one pass: conv5's activation is in fc8's graph
    a, h = out["conv5"], out["fc8"]
    a.retain_grad()
    chosen = h.argmax(1)
    h.gather(1, chosen.unsqueeze(1)).sum().backward()
    cam = (a.grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
    cam = F.interpolate(cam, size=(meta.input_size,) * 2, mode="bilinear", align_corners=False)[:, 0].detach()
    for b, m in enumerate(maps):
        assert m.target == int(chosen[b])
        torch.testing.assert_close(m.values, cam[b], atol=1e-5, rtol=1e-4)
    relu = att.gradcam(images, layer="conv5")
    for m, r in zip(maps, relu, strict=True):
        torch.testing.assert_close(r.values, m.values.clamp(min=0), atol=1e-5, rtol=1e-4)


def test_results_are_cached_per_image_class_and_parameters(tiny) -> None:
    model, meta, images = tiny
    att = Attributor(model, meta, "cpu")
    first = att.occlusion(images[:2], targets=0)
    again = att.occlusion(images[:2], targets=0)
    assert all(a is b for a, b in zip(first, again, strict=True))
    other = att.occlusion(images[:2], targets=1)
    assert all(a is not b for a, b in zip(first, other, strict=True))
    assert att.occlusion(images[:1], targets=0, window=5)[0] is not first[0]
    with pytest.raises(EvaluationError):
        att.gradcam(images[:1], targets=meta.num_classes)
    with pytest.raises(EvaluationError):
        att.explain(images[:1], "lime")


def test_spearman_handles_ties_and_constants() -> None:
    a = torch.tensor([1.0, 2.0, 2.0, 3.0])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, torch.zeros(4)))


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_saliency_sanity_check_randomised_weights_change_the_map(tiny, method: str) -> None:
    """Adebayo et al. 2018: maps that explain the model decorrelate when its weights are randomised."""
    model, meta, images = tiny
    result = sanity_check(model, meta, images, method)
    assert len(result.correlations) == len(images)
    assert result.passed(0.5), result.correlations
    # The check can fail: the same model against itself correlates perfectly.
    same = Attributor(model, meta, "cpu").explain(images, method, [0] * len(images))
    again = Attributor(model, meta, "cpu").explain(images, method, [0] * len(images))
    assert all(spearman(a.values, b.values) == pytest.approx(1.0) for a, b in zip(same, again, strict=True)
               if a.values.std() > 0)
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), randomised(model).parameters(), strict=True)
                   if p.dim() > 1)


def test_attribution_on_a_torchvision_layout_model() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet_owt").eval()
    meta = imagenet_meta("alexnet_owt", 1000)
    image = torch.randint(0, 256, (1, 3, 300, 260), dtype=torch.uint8)  # any size: brought to 256, centre 224
    att = Attributor(model, meta, "cpu")
    g = att.gradcam(image, targets=7)[0]
    o = att.occlusion(image, targets=7, window=56, stride=56)[0]  # 16 positions: keep the test quick
    assert g.values.shape == o.values.shape == (224, 224)
    vis = visualise(model, meta, "conv2", 3, steps=3)
    assert vis.image.shape == (3, 224, 224) and vis.activation > vis.start_activation
    assert overlay(torch.zeros(3, 224, 224, dtype=torch.uint8), o.values).shape == (3, 224, 224)


def test_feature_visualisation_raises_the_units_activation(tiny, tmp_path: Path) -> None:
    model, meta, _ = tiny
    for layer, unit in (("conv2", 3), ("fc8", 1)):
        vis = visualise(model, meta, layer, unit, steps=64)
        assert vis.image.shape == (3, meta.input_size, meta.input_size) and vis.image.dtype == torch.uint8
        assert vis.activation > vis.start_activation + 0.1, (layer, vis.start_activation, vis.activation)
    first, computed = cached_visualisation(model, meta, "conv3", 2, tmp_path, steps=8)
    assert computed and (tmp_path / "conv3-2-s8-r0.png").is_file()
    again, computed = cached_visualisation(model, meta, "conv3", 2, tmp_path, steps=8)
    assert not computed and torch.equal(first, again)
    with pytest.raises(EvaluationError):
        visualise(model, meta, "conv3", 10_000, steps=1)


def test_cli_explain_and_visualise(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    image = next((tiny_run.data / "val").rglob("*.jpg"))
    assert main(["explain", "--checkpoint", str(tiny_run.run_dir), str(image), "--out", str(tmp_path),
                 "--cache", str(tmp_path / "none"), "--device", "cpu", "--class", "1"]) == 0
    out = capsys.readouterr().out
    assert "occlusion for" in out and "gradcam for" in out and "no unit atlas" in out
    assert len(list(tmp_path.glob("*-occlusion-1.png"))) == 1
    assert main(["visualise", "--checkpoint", str(tiny_run.run_dir), "--layer", "conv2", "--unit", "0",
                 "--steps", "4", "--out", str(tmp_path / "v.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "v.png").stat().st_size > 0
    assert main(["explain", "--checkpoint", str(tiny_run.run_dir), str(image), "--class", "no-such-class"]) == 2
