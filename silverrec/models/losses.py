"""Retrieval loss: in-batch sampled softmax with logQ correction and accidental-hit masking."""
from typing import Optional

import torch
from torch import Tensor, nn


class InBatchSoftmaxLoss(nn.Module):
    """Sampled softmax over the in-batch items (Yi et al., RecSys 2019).

    The other positives of a batch are the negatives. They were sampled in proportion to item
    frequency, so each column's logit is corrected by ``- log q(item)`` (logQ correction);
    a column holding the same item as the row's positive (an accidental hit) is masked out.

    Args:
        item_log_q (Tensor): float32 [N], log of each item's in-batch sampling probability
            (log of its share of training interactions, see :func:`item_log_frequency`).

    Call Args:
        logits (Tensor): [B, B] temperature-scaled similarities of user i and positive item j.
        item_rows (Tensor): int64 [B] rows of the positive items.
        weights (Optional[Tensor]): float32 [B] per-row weights (a task's labels: a row whose
            label is 0 is not a positive of that task); None = all ones.

    Returns:
        Tensor: scalar weighted mean cross-entropy (0 when all weights are 0).

    Example::

        >>> loss = InBatchSoftmaxLoss(torch.log(torch.full((10,), 0.1)))
        >>> loss(torch.randn(4, 4), torch.tensor([1, 2, 3, 1])).shape
        torch.Size([])
    """

    def __init__(self, item_log_q: Tensor) -> None:
        super().__init__()
        self.register_buffer("item_log_q", item_log_q.float(), persistent=False)

    def forward(self, logits: Tensor, item_rows: Tensor, weights: Optional[Tensor] = None) -> Tensor:
        b = logits.shape[0]
        if logits.shape != (b, b) or item_rows.shape != (b,):
            raise ValueError(f"InBatchSoftmaxLoss: logits {tuple(logits.shape)} and item_rows {tuple(item_rows.shape)} must be [B, B] and [B]")
        logits = logits - self.item_log_q[item_rows].unsqueeze(0)
        same = item_rows.unsqueeze(0) == item_rows.unsqueeze(1)
        diag = torch.eye(b, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same & ~diag, float("-inf"))
        return weighted_cross_entropy(logits, torch.arange(b, device=logits.device), weights)


def weighted_cross_entropy(logits: Tensor, target: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Softmax cross-entropy of each row, averaged with ``weights``.

    Args:
        logits (Tensor): [B, C] (masked entries -inf).
        target (Tensor): int64 [B] the positive column of each row.
        weights (Optional[Tensor]): [B] non-negative row weights; None = plain mean.

    Returns:
        Tensor: scalar ``sum(w * ce) / max(sum(w), 1e-6)`` (0 when all weights are 0).
    """
    if weights is None:
        return nn.functional.cross_entropy(logits, target)
    ce = nn.functional.cross_entropy(logits, target, reduction="none")
    return (ce * weights).sum() / weights.sum().clamp_min(1e-6)


def item_log_frequency(item_rows: Tensor, num_items: int) -> Tensor:
    """log of each item's share of ``item_rows`` (an item never seen counts as half an occurrence).

    Args:
        item_rows (Tensor): int64 [M] item row of every training interaction.
        num_items (int): N.

    Returns:
        Tensor: float32 [N].
    """
    counts = torch.bincount(item_rows, minlength=num_items).float().clamp_min(0.5)
    return (counts / max(item_rows.numel(), 1)).log()
