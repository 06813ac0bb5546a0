"""The conv1 kernels as a picture, like the paper's Figure 3.

The paper shows the 96 learned 11x11x3 kernels of the first layer: the 48 of GPU 1
came out largely colour-agnostic, the 48 of GPU 2 largely colour-specific. Here
each tower is drawn as its own block (``model.tower_split`` kernels per tower; one
block for single-column models), each kernel contrast-normalised on its own so that
its pattern is visible whatever its scale, and :func:`colourfulness` puts a number on
"colour-specific": how much a kernel's three colour planes differ from each other.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


def conv1_weight(model: nn.Module) -> Tensor:
    """The first layer's kernels ``[K, 3, k, k]`` (towers concatenated A then B), on the CPU."""
    if hasattr(model, "a") and hasattr(model.a, "conv1"):  # AlexNetSplit
        return torch.cat([model.a.conv1.weight.detach().cpu(), model.b.conv1.weight.detach().cpu()])
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d):
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no convolution over RGB input")
    return conv.weight.detach().float().cpu()


def towers(model: nn.Module, weight: Tensor) -> list[Tensor]:
    """The kernels split per tower: two blocks for the paper's network, else one."""
    split = int(getattr(model, "tower_split", 0) or 0)
    if 0 < split < weight.shape[0]:
        return list(weight.split(split))
    return [weight]


def normalise_kernels(weight: Tensor) -> Tensor:
    """Each kernel stretched to 0..1 on its own min..max (all three channels together)."""
    w = weight.float()
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    return (w - lo) / (hi - lo).clamp_min(1e-12)


def colourfulness(weight: Tensor) -> Tensor:
    """Per kernel: the energy of its colour-difference part over its total energy, in 0..1.

    A kernel that treats R, G and B alike (colour-agnostic: a luminance edge) scores near
    0; one that responds to colour contrasts (colour-specific: a blob of one hue) scores
    high. Computed as ``|w - mean_c(w)|^2 / |w - mean(w)|^2`` over the kernel.
    """
    w = weight.float()
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    grey = w.mean(dim=1, keepdim=True)
    return ((w - grey) ** 2).sum((1, 2, 3)) / (w**2).sum((1, 2, 3)).clamp_min(1e-12)


def _block(kernels: Tensor, cols: int, scale: int, pad: int) -> np.ndarray:
    """One tower's kernels as a uint8 image grid of ``cols`` columns."""
    n, _, kh, kw = kernels.shape
    rows = math.ceil(n / cols)
    cell_h, cell_w = kh * scale + pad, kw * scale + pad
    out = np.full((rows * cell_h + pad, cols * cell_w + pad, 3), 255, dtype=np.uint8)
    pics = (normalise_kernels(kernels) * 255).round().to(torch.uint8)
    pics = pics.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * cell_h, pad + c * cell_w
        out[y : y + kh * scale, x : x + kw * scale] = pics[i]
    return out


def kernel_grid(model: nn.Module, scale: int | None = None, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 ``[H, W, 3]`` picture of the conv1 kernels, one block per tower, stacked vertically.

    ``scale``: pixels per kernel tap (default: about 44 px per kernel, as legible as the
    paper's figure); ``cols``: kernels per row (default 16 for 48-kernel towers, else ~sqrt).
    """
    weight = conv1_weight(model)
    if weight.shape[1] != 3:
        raise ValueError(f"conv1 has {weight.shape[1]} input channels; a colour picture needs 3")
    blocks = towers(model, weight)
    k = weight.shape[-1]
    scale = scale or max(1, round(44 / k))
    per_block = blocks[0].shape[0]
    cols = cols or (16 if per_block >= 32 and per_block % 16 == 0 else math.ceil(math.sqrt(per_block)))
    images = [_block(b, cols, scale, pad) for b in blocks]
    gap = np.full((pad * 6, images[0].shape[1], 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, im in enumerate(images):
        if i:
            parts.append(gap)
        parts.append(im)
    return np.concatenate(parts, axis=0)


def save_kernel_grid(model: nn.Module, path: str | Path, **kwargs) -> Path:
    """Write :func:`kernel_grid` as a PNG (exact pixels, no resampling)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(kernel_grid(model, **kwargs)).save(path)
    return path


def tower_summary(model: nn.Module) -> list[dict[str, float]]:
    """Per tower: number of kernels and mean/median :func:`colourfulness` (for the report)."""
    out = []
    for block in towers(model, conv1_weight(model)):
        c = colourfulness(block)
        out.append({"kernels": int(block.shape[0]), "mean": float(c.mean()), "median": float(c.median())})
    return out
