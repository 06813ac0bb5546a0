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
    ``nn.LocalResponseNorm`` (and Caffe) divide ``alpha`` by ``n``; :func:`lrn` uses
    the paper's ``alpha`` as is: with k=2, n=5, alpha=1e-4, beta=0.75 this module
    equals the formula in the paper (tested against :func:`lrn_reference` and
    against ``F.local_response_norm`` with ``alpha * n``). Channels beyond the edges count as zeros, which is the
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
        return lrn(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha} (paper convention), beta={self.beta}, "
            f"k={self.k}, groups={self.groups}"
        )


def lrn(
    x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1
) -> torch.Tensor:
    """Paper-convention LRN of ``[B, C, H, W]`` in a few elementwise ops, any memory format.

    ``F.local_response_norm`` sums the window with ``avg_pool3d`` over a padded 5-D copy,
    which forces NCHW and is slow in both directions. Here the window sum is ``size``
    shifted slices of the zero-padded squares along the channel axis: the tensor keeps
    its layout (channels_last stays channels_last, about 2x faster fwd+bwd on a CPU),
    ``groups`` is a view (``unflatten``), and torch.compile fuses it into one kernel.
    For an even ``size`` the window is PyTorch's (``size//2`` before, ``size//2 - 1`` after).
    """
    if x.dim() != 4:
        raise ValueError(f"LRN expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    cg, r = c // groups, size // 2
    xg = x.unflatten(1, (groups, cg))  # [B, G, C/G, H, W]
    sq = F.pad(xg * xg, (0, 0, 0, 0, r, size - 1 - r))  # zeros beyond each group's edges
    window = sq[:, :, 0:cg]
    for i in range(1, size):
        window = window + sq[:, :, i : i + cg]
    return (xg * (window * alpha + k).pow(-beta)).flatten(1, 2)


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


def relu_and_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """A conv output through its ReLU and normalisation, each kind in its usual place:
    batch norm before the ReLU (as it is used today), LRN (the paper's) and none after it."""
    if isinstance(norm, nn.BatchNorm2d):
        return F.relu(norm(x))
    return norm(F.relu(x))
