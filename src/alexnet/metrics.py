"""Top-k hit counting: the one implementation that training and evaluation share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def topk_hits(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """For each ``k`` in ``ks``, how many rows of ``logits [B, C]`` have their ``target``
    among their ``k`` highest scores: an int64 tensor ``[len(ks)]`` on the logits' device
    (summing it never waits for the device). ``k`` is capped at ``C``: with 4 classes,
    top-5 counts every row."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    return count_hits(top, target, ks)


def count_hits(top_indices: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """:func:`topk_hits` from indices already ranked best first (``logits.topk(k).indices``)."""
    hit = top_indices == target.view(-1, 1)
    return torch.stack([hit[:, :k].any(1).sum() for k in ks])
