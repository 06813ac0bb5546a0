"""Training-set statistics the paper's preprocessing needs: the mean image and the PCA of RGB.

Pixel values are kept on the 0..255 scale for the mean image and channel mean/std
(the paper subtracts the mean activity from raw pixels). The RGB covariance is
computed on the 0..1 scale, the scale of the widely copied ImageNet eigenvalues, so
a lighting shift is ``eigvec @ (alpha * eigval)`` in 0..1 units, times 255 on pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alexnet.data.sampling import spaced_indices
from alexnet.errors import DatasetError
from alexnet.files import atomic_target

# Fallbacks when a dataset has no stored statistics (ImageNet, widely copied constants).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


@dataclass
class DatasetStats:
    """Per-dataset statistics, stored with a prepared dataset and in every checkpoint.

    mean_image: float32 [3, S, S] on the 0..255 scale (None when only channel stats exist).
    mean, std:  float32 [3], 0..255 scale.
    eigval:     float32 [3], eigenvalues of the RGB covariance (0..1 scale), descending.
    eigvec:     float32 [3, 3], eigenvectors as columns, matching ``eigval``.
    count:      number of images the statistics were computed from (0 for fallbacks).
    """

    mean: Tensor
    std: Tensor
    eigval: Tensor
    eigvec: Tensor
    mean_image: Tensor | None = None
    count: int = 0

    @classmethod
    def imagenet_fallback(cls) -> DatasetStats:
        return cls(
            mean=torch.tensor(IMAGENET_MEAN),
            std=torch.tensor(IMAGENET_STD),
            eigval=torch.tensor(IMAGENET_EIGVAL),
            eigvec=torch.tensor(IMAGENET_EIGVEC),
        )

    def to_tensors(self, prefix: str = "stats.") -> dict[str, Tensor]:
        """Flat tensor dict (for safetensors files and checkpoints)."""
        out = {
            f"{prefix}mean": self.mean.float().contiguous(),
            f"{prefix}std": self.std.float().contiguous(),
            f"{prefix}eigval": self.eigval.float().contiguous(),
            f"{prefix}eigvec": self.eigvec.float().contiguous(),
            f"{prefix}count": torch.tensor([self.count], dtype=torch.int64),
        }
        if self.mean_image is not None:
            out[f"{prefix}mean_image"] = self.mean_image.float().contiguous()
        return out

    def problem(self, image_size: int | None = None) -> str:
        """What is wrong with statistics read from an untrusted file ('' if nothing): each
        tensor's type and shape, the mean image's side (``image_size`` when known), and
        finite values; files are checked here before anything is built from them."""
        shapes = {"mean": (3,), "std": (3,), "eigval": (3,), "eigvec": (3, 3)}
        bad = [k for k, shape in shapes.items()
               if not isinstance(getattr(self, k), Tensor) or tuple(getattr(self, k).shape) != shape]
        mi = self.mean_image
        if mi is not None and (not isinstance(mi, Tensor) or mi.dim() != 3 or mi.shape[0] != 3
                               or mi.shape[1] != mi.shape[2] or (image_size is not None and mi.shape[1] != image_size)):
            bad.append("mean_image")
        if bad:
            return ", ".join(bad)
        if not all(torch.isfinite(t).all() for t in self.to_tensors().values() if t.is_floating_point()):
            return "non-finite values"
        return ""

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str = "stats.") -> DatasetStats:
        try:
            return cls(
                mean=tensors[f"{prefix}mean"].float(),
                std=tensors[f"{prefix}std"].float(),
                eigval=tensors[f"{prefix}eigval"].float(),
                eigvec=tensors[f"{prefix}eigvec"].float(),
                mean_image=tensors.get(f"{prefix}mean_image"),
                count=int(tensors[f"{prefix}count"].item()) if f"{prefix}count" in tensors else 0,
            )
        except KeyError as exc:
            raise ValueError(f"dataset statistics incomplete: missing {exc.args[0]}") from None
        except (AttributeError, RuntimeError, TypeError) as exc:  # junk where a tensor belongs
            raise ValueError(f"dataset statistics malformed: {exc}") from None


class StatsAccumulator:
    """Streams uint8 image batches [B, 3, S, S] and produces :class:`DatasetStats`.

    Sums are float64 so that a million images do not lose precision.
    """

    def __init__(self) -> None:
        self.count = 0
        self.pixels = 0
        self.sum_image: Tensor | None = None
        self.sum_rgb = torch.zeros(3, dtype=torch.float64)
        self.sum_outer = torch.zeros(3, 3, dtype=torch.float64)

    def update(self, batch: Tensor) -> None:
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected uint8 [B, 3, H, W], got {batch.dtype} {tuple(batch.shape)}")
        x = batch.double()
        image_sum = x.sum(0)
        if self.sum_image is None:
            self.sum_image = image_sum
        elif self.sum_image.shape != image_sum.shape:
            raise ValueError("all images must share one size to form a mean image")
        else:
            self.sum_image += image_sum
        rgb = x.permute(1, 0, 2, 3).reshape(3, -1) / 255.0
        self.sum_rgb += rgb.sum(1)
        self.sum_outer += rgb @ rgb.T
        self.count += batch.shape[0]
        self.pixels += rgb.shape[1]

    def finish(self) -> DatasetStats:
        if self.count == 0 or self.sum_image is None:
            raise ValueError("no images to compute statistics from")
        mean01 = self.sum_rgb / self.pixels
        cov = self.sum_outer / self.pixels - torch.outer(mean01, mean01)
        eigval, eigvec = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(eigval, descending=True)
        std01 = torch.sqrt(torch.clamp(torch.diagonal(cov), min=1e-12))
        return DatasetStats(
            mean=(mean01 * 255).float(),
            std=(std01 * 255).float(),
            eigval=eigval[order].clamp(min=0).float(),
            eigvec=eigvec[:, order].float(),
            mean_image=(self.sum_image / self.count).float(),
            count=self.count,
        )


def sample_stats(dataset: Any, max_images: int | None = None, batch: int = 64) -> DatasetStats:
    """Statistics of ``max_images`` evenly spaced items (all by default) of a dataset with a
    ``get_batch(indices) -> (uint8 [B,3,S,S], labels)`` method; ImageNet's for an empty one."""
    n = len(dataset)
    if n == 0:
        return DatasetStats.imagenet_fallback()
    idx = spaced_indices(n, max_images)
    return compute_stats(dataset.get_batch(idx[k : k + batch])[0] for k in range(0, len(idx), batch))


def compute_stats(batches: Iterable[Tensor]) -> DatasetStats:
    """Statistics of a stream of uint8 [B, 3, S, S] batches."""
    acc = StatsAccumulator()
    for batch in batches:
        acc.update(batch)
    return acc.finish()


# --------------------------------------------------------------------------- the stats file

STATS_FILE = "stats.safetensors"  # a dataset's stored statistics, beside its splits (`alexnet data stats`)


def load_stats_file(path: str | os.PathLike) -> DatasetStats:
    """Read statistics stored by ``alexnet data stats`` (untrusted: shapes are checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        stats = DatasetStats.from_tensors(load_file(str(path)))
    except (OSError, SafetensorError, ValueError) as exc:
        raise DatasetError(f"cannot read statistics {path}: {exc}") from None
    problem = stats.problem()
    if problem:
        raise DatasetError(f"statistics {path} are malformed ({problem})")
    return stats


def save_stats_file(stats: DatasetStats, path: str | os.PathLike) -> None:
    """Store statistics as safetensors, atomically (a crash never leaves a torn file)."""
    from safetensors.torch import save_file

    with atomic_target(path) as tmp:
        save_file(stats.to_tensors(), str(tmp))
