"""Small composable layers the AlexNet family is built from.

The one layer PyTorch does not give us as the paper wrote it is local response
normalisation (LRN), so it lives here with its convention spelled out. The fast CIFAR-10
member of the family adds two: a first layer that whitens image patches
(:class:`PatchWhitening`) and batch norm whose scale stays fixed (:func:`shift_only_bn`).
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


class PatchWhitening(nn.Conv2d):
    """A ``k x k`` convolution whose filters whiten the image's ``k x k`` patches.

    :meth:`fit_` sets the filters from sample images: the eigenvectors of the patches'
    covariance, each divided by the square root of its eigenvalue, and each also negated
    (``2 x 3k^2`` output channels), so that the layer's outputs are decorrelated with unit
    variance and a following ReLU-like activation loses no sign. The filters are then
    frozen; only the bias learns. Speed runs on CIFAR-10 (hlb-CIFAR10, airbench) found
    that this first layer saves several epochs: the next layers train on decorrelated inputs
    from the first step instead of learning to decorrelate them.
    """

    def __init__(self, in_channels: int = 3, kernel_size: int = 2, eps: float = 5e-4) -> None:
        dims = in_channels * kernel_size * kernel_size
        super().__init__(in_channels, 2 * dims, kernel_size, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit_(self, images: torch.Tensor) -> PatchWhitening:
        """Set the filters from ``images`` (``[N, C, H, W]``, normalised floats)."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected [N, {self.in_channels}, H, W] images, got {tuple(images.shape)}")
        k = self.kernel_size[0]
        patches = images.double().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, self.in_channels * k * k)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov)
        filters = (eigvec.T / (eigval.clamp_min(0) + self.eps).sqrt()[:, None]).reshape(-1, self.in_channels, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))
        self.bias.zero_()
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, filters fixed"


def shift_only_bn(channels: int, momentum: float = 0.4, eps: float = 1e-12) -> nn.BatchNorm2d:
    """Batch norm whose scale is fixed at 1 and whose shift learns.

    In a network of batch-normalised convolutions the scale only multiplies what the next
    convolution's weights can multiply anyway; fixed, it leaves fewer parameters for the
    same function and lets the shifts take a larger learning rate (``bias_lr_scale``).
    The running statistics follow the batch faster than PyTorch's default (momentum 0.4,
    not 0.1) because a short run has few steps to settle them.
    """
    bn = nn.BatchNorm2d(channels, momentum=momentum, eps=eps)
    bn.weight.requires_grad_(False)
    return bn
