"""Small composable layers the AlexNet family is built from.

The one layer PyTorch does not give us as the paper wrote it is local response
normalisation (LRN), so it lives here with its convention spelled out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LocalResponseNorm(nn.Module):
    """Local response normalisation in the *paper's* convention (Krizhevsky et al. 2012, 3.3).

    ``b[c] = a[c] / (k + alpha * sum_{c' in window(c, n)} a[c']^2) ** beta``

    The paper's ``alpha`` multiplies the plain sum of squares. PyTorch's
    ``nn.LocalResponseNorm`` (and Caffe) divide ``alpha`` by ``n``, so we pass
    ``alpha * n`` to ``F.local_response_norm``: with k=2, n=5, alpha=1e-4,
    beta=0.75 this module equals the formula in the paper (tested against a
    direct implementation). Channels beyond the edges count as zeros, which is the
    paper's ``max(0, i - n/2) .. min(N - 1, i + n/2)`` window.

    ``groups`` keeps the window inside each tower: on the paper's two GPUs a
    kernel of tower A never saw tower B's channels, so in the grouped (one-device)
    form the 96 conv1 maps are normalised as two stacks of 48.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        if g == 1:
            return F.local_response_norm(x, self.size, self.alpha * self.size, self.beta, self.k)
        b, c, h, w = x.shape
        y = F.local_response_norm(
            x.reshape(b * g, c // g, h, w), self.size, self.alpha * self.size, self.beta, self.k
        )
        return y.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha} (paper convention), beta={self.beta}, "
            f"k={self.k}, groups={self.groups}"
        )


def lrn_reference(
    x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> torch.Tensor:
    """The paper's LRN formula written out channel by channel (slow; for tests and docs)."""
    n_channels = x.shape[1]
    out = torch.empty_like(x)
    for i in range(n_channels):
        lo, hi = max(0, i - size // 2), min(n_channels - 1, i + size // 2)
        denom = (k + alpha * (x[:, lo : hi + 1] ** 2).sum(dim=1)) ** beta
        out[:, i] = x[:, i] / denom
    return out


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Normalisation after a conv block for the small family members: 'lrn', 'bn' or 'none'."""
    if kind == "lrn":
        return LocalResponseNorm()
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: expected 'lrn', 'bn' or 'none'")
