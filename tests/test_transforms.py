"""The paper's augmentation and test crops, and the dataset statistics they use."""

from __future__ import annotations

import pytest
import torch

from alexnet.data.stats import DatasetStats, compute_stats
from alexnet.data.transforms import EvalTransform, TrainAugment, ten_crop_offsets


def ramp(b: int = 2, s: int = 8) -> torch.Tensor:
    """Images whose pixel value is 10 * column + row, so crops and flips are checkable."""
    row = torch.arange(s, dtype=torch.uint8).view(1, 1, 1, s)
    return (row * 10 + torch.arange(s, dtype=torch.uint8).view(1, 1, s, 1)).expand(b, 3, s, s).contiguous()


def plain_stats(s: int = 8) -> DatasetStats:
    st = DatasetStats.imagenet_fallback()
    st.mean, st.std = torch.zeros(3), torch.ones(3)
    st.mean_image = torch.zeros(3, s, s)
    return st


def test_stats_mean_image_and_pca() -> None:
    torch.manual_seed(0)
    base = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    batch = torch.cat([base, base, (base // 2)], 1)  # strongly correlated channels
    st = compute_stats([batch[:32], batch[32:]])
    torch.testing.assert_close(st.mean_image, batch.double().mean(0).float())
    assert st.count == 64
    assert st.eigval[0] > 10 * st.eigval[1]  # one dominant component
    v = st.eigvec[:, 0].abs().tolist()
    assert v[0] == pytest.approx(v[1], rel=1e-3) and v[2] == pytest.approx(v[0] / 2, rel=1e-2)
    back = DatasetStats.from_tensors(st.to_tensors())
    torch.testing.assert_close(back.eigvec, st.eigvec)


def test_train_augment_crops_are_windows_of_the_image() -> None:
    x = ramp(16)
    aug = TrainAugment(5, plain_stats(), mode="image", lighting=0.0, flip=True)
    out = aug(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 5, 5)
    flipped = 0
    for img in out[:, 0]:
        cols = img[0] // 10
        diffs = cols[1:] - cols[:-1]
        assert torch.all(diffs == 1) or torch.all(diffs == -1)  # a contiguous window, maybe mirrored
        flipped += int(diffs[0] == -1)
        rows = img[:, 0] % 10
        assert torch.all(rows[1:] - rows[:-1] == 1)
    assert 0 < flipped < 16


def test_lighting_shifts_along_principal_components() -> None:
    x = torch.full((256, 3, 4, 4), 128, dtype=torch.uint8)
    st = plain_stats(4)
    aug = TrainAugment(4, st, mode="image", lighting=0.1, flip=False, random_crop=False)
    out = aug(x, generator=torch.Generator().manual_seed(0))
    shift = out[:, :, 0, 0] - 128  # per image RGB shift
    assert torch.all(out == out[:, :, :1, :1])  # the same shift on every pixel
    # Covariance of the shifts = V diag((0.1 * 255 * eigval)^2) V^T
    expected = st.eigvec @ torch.diag((0.1 * 255 * st.eigval) ** 2) @ st.eigvec.T
    torch.testing.assert_close(torch.cov(shift.T), expected, rtol=0.25, atol=0.05)


def test_ten_crop_layout() -> None:
    x = ramp(1, 8)
    out = EvalTransform(4, plain_stats(), mode="image", ten_crop=True)(x)
    assert out.shape == (1, 10, 3, 4, 4)
    for i, (top, left) in enumerate(ten_crop_offsets(8, 8, 4)):
        torch.testing.assert_close(out[0, i], x[0, :, top : top + 4, left : left + 4].float())
        torch.testing.assert_close(out[0, i + 5], out[0, i].flip(-1))
    centre = EvalTransform(4, plain_stats(), mode="image")(x)
    torch.testing.assert_close(centre[0], out[0, 4])


def test_normalisation_modes() -> None:
    x = torch.full((1, 3, 4, 4), 200, dtype=torch.uint8)
    st = plain_stats(4)
    st.mean_image = torch.full((3, 4, 4), 50.0)
    st.mean, st.std = torch.tensor([100.0, 100.0, 100.0]), torch.tensor([50.0, 25.0, 10.0])
    img = EvalTransform(4, st, mode="image")(x)
    assert torch.all(img == 150)
    ch = EvalTransform(4, st, mode="channel")(x)
    assert ch[0, :, 0, 0].tolist() == [2.0, 4.0, 10.0]
    with pytest.raises(ValueError, match="unknown normalisation"):
        EvalTransform(4, st, mode="zca")
    with pytest.raises(ValueError, match="smaller"):
        EvalTransform(8, st)(x)


def test_cutout_blanks_one_square_of_the_given_side_per_image():
    stats = DatasetStats(mean=torch.zeros(3), std=torch.ones(3), eigval=torch.ones(3), eigvec=torch.eye(3))
    x = torch.full((64, 3, 16, 16), 7, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = TrainAugment(16, stats, "channel", lighting=0.0, cutout=6)(x, generator=g)
    blank = out[:, 0] == 0
    assert torch.equal(blank, (out == 0).all(1))  # every channel of the square
    assert (out[~blank.unsqueeze(1).expand_as(out)] == 7).all()  # the rest untouched
    areas = blank.sum((1, 2))
    assert areas.max() == 36 and (areas > 0).all()  # a full 6x6 square where it fits, clipped at the edges
    rows, cols = blank.any(2), blank.any(1)
    assert torch.equal(blank, rows.unsqueeze(2) & cols.unsqueeze(1))  # one rectangle each
    centres = {(int(r.nonzero().float().mean()), int(c.nonzero().float().mean())) for r, c in zip(rows, cols, strict=True)}
    assert len(centres) > 20  # drawn per image
    assert torch.equal(TrainAugment(16, stats, "channel", lighting=0.0)(x, generator=g), x.float())  # 0: off
    with pytest.raises(ValueError, match="cutout"):
        TrainAugment(16, stats, cutout=17)
