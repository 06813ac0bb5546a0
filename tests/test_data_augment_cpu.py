"""TrainAugment's CPU fast path gives the same result as the batched gather used on GPUs."""

from __future__ import annotations

import pytest
import torch

from alexnet.data import DatasetStats, TrainAugment
from alexnet.data.transforms import _gather_crops


def _reference(aug: TrainAugment, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The gather path with the same random draws, in the same order, as forward()."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    xf = x.float()
    if aug.lighting > 0:
        alpha = torch.randn(b, 3, generator=g) * aug.lighting
        xf = xf + ((alpha * aug.eigval) @ aug.eigvec.T * 255.0).view(b, 3, 1, 1)
    top = torch.randint(0, h - aug.crop + 1, (b,), generator=g)
    left = torch.randint(0, w - aug.crop + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5 if aug.flip else torch.zeros(b, dtype=torch.bool)
    return _gather_crops(aug.norm.full(xf), top, left, aug.crop, flip)


@pytest.mark.parametrize("mode", ["image", "channel"])
@pytest.mark.parametrize("lighting", [0.0, 0.1])
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_path_matches_gather(mode, lighting, flip, threads):
    stats = DatasetStats.imagenet_fallback()
    stats.mean_image = torch.rand(3, 20, 24) * 255
    x = torch.randint(0, 256, (33, 3, 20, 24), dtype=torch.uint8)
    aug = TrainAugment(16, stats, mode=mode, lighting=lighting, flip=flip)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = aug(x, torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before  # the thread setting is restored
    ref = _reference(aug, x, 5)
    assert out.shape == ref.shape == (33, 3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-3)


def test_cpu_path_checks_mean_image_size():
    stats = DatasetStats.imagenet_fallback()
    stats.mean_image = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match="mean image"):
        TrainAugment(4, stats, mode="image")(torch.zeros(2, 3, 10, 10, dtype=torch.uint8))
