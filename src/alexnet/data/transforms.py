"""The paper's augmentation and test-time cropping as batched tensor operations.

Everything here takes a uint8 batch ``[B, 3, S, S]`` (S = the stored side, 256 for
ImageNet) already on the target device and returns float32 batches, so that the
augmentation runs on the GPU when there is one and never per image in Python:

* :class:`TrainAugment`: PCA lighting, mean subtraction, a random ``crop`` x ``crop``
  patch and a horizontal flip per image, all in one gather.
* :class:`EvalTransform`: the centre crop, or the paper's ten crops (four corners and
  the centre, plus their reflections) as ``[B, 10, 3, crop, crop]``.

Normalisation ``mode``:
  ``"image"``   subtract the training set's mean image (the paper), pixels stay 0..255;
  ``"channel"`` per-channel ``(x - mean) / std`` (the modern choice, unit scale).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from alexnet.data.stats import DatasetStats

MODES = ("image", "channel")


class Normalize(nn.Module):
    """Mean-image or per-channel normalisation of float pixels on the 0..255 scale."""

    def __init__(self, stats: DatasetStats, mode: str = "channel") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown normalisation {mode!r}: expected one of {MODES}")
        if mode == "image" and stats.mean_image is None:
            raise ValueError("normalisation 'image' needs a mean image; run `alexnet data stats`")
        self.mode = mode
        self.register_buffer("mean", stats.mean.float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", stats.std.float().view(1, 3, 1, 1), persistent=False)
        mean_image = stats.mean_image if stats.mean_image is not None else torch.zeros(3, 1, 1)
        self.register_buffer("mean_image", mean_image.float().unsqueeze(0), persistent=False)

    def full(self, x: Tensor) -> Tensor:
        """Normalise an uncropped [B, 3, S, S] float batch (the mean image is S x S)."""
        if self.mode == "image":
            if self.mean_image.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"mean image is {tuple(self.mean_image.shape[-2:])} but images are {tuple(x.shape[-2:])}"
                )
            return x - self.mean_image
        return (x - self.mean) / self.std


def _gather_crops(x: Tensor, top: Tensor, left: Tensor, size: int, flip: Tensor) -> Tensor:
    """One crop per image at (top, left), mirrored where ``flip``: a single advanced-index gather."""
    b = x.shape[0]
    ar = torch.arange(size, device=x.device)
    rows = top.view(b, 1) + ar.view(1, size)  # [B, size]
    cols = torch.where(flip.view(b, 1), left.view(b, 1) + (size - 1 - ar).view(1, size), left.view(b, 1) + ar)
    batch_idx = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan_idx = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return x[batch_idx, chan_idx, rows.view(b, 1, size, 1), cols.view(b, 1, 1, size)]


class TrainAugment(nn.Module):
    """Random crop + flip + PCA lighting + normalisation, batched on the batch's device.

    ``lighting`` is the standard deviation of the paper's alpha_i ~ N(0, 0.1) (0 disables).
    The lighting shift ``eigvec @ (alpha * eigval)`` is drawn once per image per use.
    ``cutout`` > 0 also sets a ``cutout`` x ``cutout`` square of each crop, centred on a
    uniformly drawn pixel and clipped at the edges, to the mean (0 after normalisation):
    DeVries & Taylor 2017's regulariser, not the paper's.
    """

    def __init__(
        self,
        crop: int,
        stats: DatasetStats,
        mode: str = "channel",
        lighting: float = 0.1,
        flip: bool = True,
        random_crop: bool = True,
        cutout: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= cutout <= crop:
            raise ValueError(f"cutout {cutout} must be in [0, crop={crop}]")
        self.crop, self.lighting, self.flip, self.random_crop = crop, lighting, flip, random_crop
        self.cutout = cutout
        self.norm = Normalize(stats, mode)
        self.register_buffer("eigval", stats.eigval.float(), persistent=False)
        self.register_buffer("eigvec", stats.eigvec.float(), persistent=False)

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"TrainAugment expects uint8 images, got {x.dtype}")
        b, _, h, w = x.shape
        if h < self.crop or w < self.crop:
            raise ValueError(f"images of {h}x{w} are smaller than the {self.crop} px crop")
        dev = x.device
        shift = None
        if self.lighting > 0:
            alpha = torch.randn(b, 3, device=dev, generator=generator) * self.lighting
            shift = (alpha * self.eigval) @ self.eigvec.T * 255.0  # [B, 3]
        if self.random_crop:
            top = torch.randint(0, h - self.crop + 1, (b,), device=dev, generator=generator)
            left = torch.randint(0, w - self.crop + 1, (b,), device=dev, generator=generator)
        else:
            top = torch.full((b,), (h - self.crop) // 2, device=dev)
            left = torch.full((b,), (w - self.crop) // 2, device=dev)
        if self.flip:
            flip = torch.rand(b, device=dev, generator=generator) < 0.5
        else:
            flip = torch.zeros(b, dtype=torch.bool, device=dev)
        if dev.type == "cpu":
            out = self._cpu(x, shift, top, left, flip)
        else:
            xf = x.float()
            if shift is not None:
                xf = xf + shift.view(b, 3, 1, 1)
            out = _gather_crops(self.norm.full(xf), top, left, self.crop, flip)
        if self.cutout > 0:
            centre = torch.randint(0, self.crop, (2, b, 1, 1), device=dev, generator=generator)
            at = torch.arange(self.crop, device=dev)
            lo, hi = self.cutout // 2, (self.cutout - 1) // 2  # a side of exactly `cutout` pixels
            inside_y = (at.view(1, -1, 1) >= centre[0] - lo) & (at.view(1, -1, 1) <= centre[0] + hi)
            inside_x = (at.view(1, 1, -1) >= centre[1] - lo) & (at.view(1, 1, -1) <= centre[1] + hi)
            out = out.masked_fill((inside_y & inside_x).unsqueeze(1), 0.0)
        return out

    def _cpu(self, x: Tensor, shift: Tensor | None, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
        """Same result as the gather path, ~5x faster on CPU: each uint8 image is cropped (and
        mirrored) and normalised in one pass into the output, so the full-size float batch is
        never made. Images are split across the intra-op threads, one strided op per image."""
        b, _, h, w = x.shape
        c, norm = self.crop, self.norm
        out = torch.empty((b, 3, c, c), dtype=torch.float32)
        image_mode = norm.mode == "image"
        if image_mode and norm.mean_image.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"mean image is {tuple(norm.mean_image.shape[-2:])} but images are {(h, w)}")
        mean = norm.mean_image[0]
        mean_flipped = mean.flip(-1) if image_mode and bool(flip.any()) else mean
        if image_mode:
            offset = shift if shift is not None else None
        else:
            offset = -norm.mean.view(1, 3) if shift is None else shift - norm.mean.view(1, 3)
            offset = offset.expand(b, 3)
        std = norm.std.view(3, 1, 1)
        tops, lefts, flips = top.tolist(), left.tolist(), flip.tolist()

        def run(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                src, m, t, s = x[i], mean, tops[i], lefts[i]
                if flips[i]:  # flip(crop at s) == crop of the mirrored image at w - c - s
                    src, m, s = src.flip(-1), mean_flipped, w - c - s
                o = out[i]
                if image_mode:
                    torch.sub(src[:, t : t + c, s : s + c], m[:, t : t + c, s : s + c], out=o)
                    if offset is not None:
                        o.add_(offset[i].view(3, 1, 1))
                else:
                    o.copy_(src[:, t : t + c, s : s + c]).add_(offset[i].view(3, 1, 1)).div_(std)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-image ops are small: split images, not pixels, over threads
        try:
            k = min(threads, max(1, b // 8))
            if k == 1:
                run(0, b)
            else:
                bounds = [b * j // k for j in range(k + 1)]
                list(_pool(k).map(run, bounds[:-1], bounds[1:]))
        finally:
            torch.set_num_threads(threads)
        return out


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(n: int) -> ThreadPoolExecutor:
    """A process-wide thread pool for :meth:`TrainAugment._cpu` (torch ops release the GIL)."""
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="alexnet-augment")
    return _POOLS[n]


def ten_crop_offsets(height: int, width: int, crop: int) -> list[tuple[int, int]]:
    """(top, left) of the paper's five test patches: four corners, then the centre."""
    mh, mw = height - crop, width - crop
    return [(0, 0), (0, mw), (mh, 0), (mh, mw), (mh // 2, mw // 2)]


class EvalTransform(nn.Module):
    """Centre crop (``[B, 3, c, c]``) or ten crops (``[B, 10, 3, c, c]``), normalised.

    Ten-crop order: the five patches of :func:`ten_crop_offsets`, then the same five
    mirrored. The paper averages the softmax over the ten.
    """

    def __init__(self, crop: int, stats: DatasetStats, mode: str = "channel", ten_crop: bool = False):
        super().__init__()
        self.crop, self.ten_crop = crop, ten_crop
        self.norm = Normalize(stats, mode)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        if h < self.crop or w < self.crop:
            raise ValueError(f"images of {h}x{w} are smaller than the {self.crop} px crop")
        xf = self.norm.full(x.float())
        c = self.crop
        if not self.ten_crop:
            top, left = (h - c) // 2, (w - c) // 2
            return xf[:, :, top : top + c, left : left + c]
        patches = [xf[:, :, t : t + c, s : s + c] for t, s in ten_crop_offsets(h, w, c)]
        patches += [p.flip(-1) for p in patches]
        return torch.stack(patches, dim=1)
