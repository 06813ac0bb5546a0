"""Linear probes (they learn what is linearly there, and only that) and the out-of-class threshold."""

from __future__ import annotations

import pytest
import test_analysis_support as support
import torch
from test_analysis_support import TinyRun

from alexnet.analysis.atlas import build_atlas
from alexnet.analysis.probes import (
    LinearProbe,
    OODCalibration,
    Probes,
    fit_probes,
    layer_knowledge,
    outside_classes,
    pooled,
)
from alexnet.checkpoint import load_model
from alexnet.data.splits import open_splits

tiny_run = support.tiny_run


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: with two threads on a shared 2-core machine each op waits on the
    other thread far longer than it computes (measured: 2.7 ms vs 4 us per small softmax)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int, d: int, classes: int, seed: int, shift: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * shift
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g) * 5 + 100, y  # offset and scale: standardisation matters


def test_probe_learns_a_linearly_separable_label() -> None:
    x, y = _blobs(600, 32, 5, seed=0)
    xv, yv = _blobs(300, 32, 5, seed=1)
    probe = LinearProbe.fit("fc7", x, y, 5)
    probe.score(xv, yv)
    assert probe.train_accuracy > 0.95 and probe.val_accuracy > 0.9 and probe.val_true_prob > 0.7
    p = probe.probs(xv)
    torch.testing.assert_close(p.sum(1), torch.ones(300))


def test_probe_finds_nothing_where_there_is_nothing() -> None:
    x, _ = _blobs(600, 32, 5, seed=0)
    y = torch.randint(0, 5, (600,), generator=torch.Generator().manual_seed(3))  # labels unrelated to x
    xv, _ = _blobs(400, 32, 5, seed=1)
    yv = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(4))
    probe = LinearProbe.fit("conv1", x, y, 5)
    probe.score(xv, yv)
    assert probe.val_accuracy < 0.32  # chance is 0.2


def test_probes_round_trip_through_tensors() -> None:
    x, y = _blobs(100, 8, 3, seed=0)
    probes = fit_probes({"conv1": x, "fc6": x[:, :4]}, y, ["a", "b", "c"], ["A", "B", "C"], {"conv1": x, "fc6": x[:, :4]}, y)
    back = Probes.from_stored(probes.doc(), probes.tensors())
    for name in ("conv1", "fc6"):
        torch.testing.assert_close(back.probes[name].probs(x[:, : back.probes[name].weight.shape[0]]),
                                   probes.probes[name].probs(x[:, : probes.probes[name].weight.shape[0]]))
    assert back.summary() == probes.summary()


def test_pooled_averages_conv_maps_over_space() -> None:
    a = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    torch.testing.assert_close(pooled(a), a.mean((2, 3)))
    assert pooled(torch.ones(2, 7)).shape == (2, 7)


def test_out_of_class_threshold_is_the_calibrated_quantile() -> None:
    probs = torch.full((100, 4), 0.0)
    top = torch.linspace(0.55, 1.0, 100)
    probs[:, 0] = top
    probs[:, 1] = 1 - top
    cal = OODCalibration.fit(probs, keep=0.9)
    assert cal.threshold == pytest.approx(float(torch.quantile(top, 0.1)))
    assert (top >= cal.threshold).float().mean() == pytest.approx(0.9, abs=0.011)
    low, high = outside_classes(torch.tensor([[0.26, 0.25, 0.25, 0.24], [0.97, 0.01, 0.01, 0.01]]), cal)
    assert low.outside and not high.outside
    assert "only knows these 4 classes" in low.message and "only knows these 4 classes" in high.message
    assert OODCalibration.from_dict(cal.to_dict()) == cal


def test_layer_knowledge_runs_every_probe_and_the_models_own_softmax(tiny_run: TinyRun) -> None:
    model, meta = load_model(tiny_run.checkpoint)
    train, val, _ = open_splits(tiny_run.data, "val", 0.1)
    atlas = build_atlas(model, meta, train, val, sample=None, top_k=2, batch_size=16)
    images = torch.stack([val[i][0] for i in range(3)])
    curve = layer_knowledge(model, meta, atlas.probes, images)
    assert list(curve) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    for probs in curve.values():
        assert probs.shape == (3, meta.num_classes)
        torch.testing.assert_close(probs.sum(1), torch.ones(3))
    with torch.no_grad():
        own = torch.softmax(model(meta.eval_transform()(images)), 1)
    torch.testing.assert_close(curve["fc8"], own)  # same classes in the same order: unchanged
    assert atlas.probes.train_images == len(train) and atlas.probes.val_images == len(val)
