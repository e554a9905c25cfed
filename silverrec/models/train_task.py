"""The training task: the two-tower model plus its losses, the unit DistributedModelParallel wraps.

Losses of a batch of B (user, positive item) pairs with labels ``[B, T]``:

* **retrieval, per task** -- in-batch softmax of task t's user embedding against the B items
  (logQ-corrected, accidental hits masked), each row weighted by its task-t label, so a row
  counts as a positive of ``like`` only if the user liked the item (``click`` is all ones);
* **OverArch, per task** -- the same softmax over a smaller candidate list per row: its positive,
  ``sampled_negatives`` other in-batch items (logQ-corrected), and optionally
  ``hard_negatives`` items mined from an IVF-INT8 index over the current item embeddings
  (refreshed by the trainer, see :meth:`TwoTowerTrainTask.set_negative_bank`), scored by
  :meth:`TwoTower.task_logits` (dot product + learned OverArch correction).

The total is ``sum_t task_weight[t] * (retrieval_t + over_arch_weight * overarch_t)``; the towers
are trained jointly with the OverArch.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.losses import InBatchSoftmaxLoss, weighted_cross_entropy
from silverrec.models.two_tower import TwoTower


@dataclass
class LossConfig:
    """Loss settings (YAML ``loss:``).

    Args:
        task_weights (Dict[str, float]): weight of each task's losses (tasks not listed: 1.0).
        over_arch_weight (float): weight of the OverArch losses relative to the retrieval losses
            (ignored when the model has no OverArch).
        over_arch_rows (int): rows of each batch that train the OverArch (the first ones of a
            shuffled batch; 0 = all). Its cost grows with rows x negatives x tasks.
        sampled_negatives (int): in-batch negatives per row in the OverArch loss.
        hard_negatives (int): negatives per row mined from an index over the item embeddings
            (0: none); the index is rebuilt every ``hard_negative_refresh`` steps.
        hard_negative_refresh (int): steps between rebuilds of the hard-negative index.
    """

    task_weights: Dict[str, float] = field(default_factory=dict)
    over_arch_weight: float = 1.0
    over_arch_rows: int = 256
    sampled_negatives: int = 31
    hard_negatives: int = 0
    hard_negative_refresh: int = 500

    def __post_init__(self) -> None:
        self.task_weights = dict(self.task_weights)
        for name, w in self.task_weights.items():
            if not w >= 0:
                raise ValueError(f"loss.task_weights.{name} must be >= 0, got {w}")
        if not self.over_arch_weight >= 0:
            raise ValueError(f"loss.over_arch_weight must be >= 0, got {self.over_arch_weight}")
        for name in ("over_arch_rows", "sampled_negatives", "hard_negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.hard_negative_refresh < 1:
            raise ValueError(f"loss.hard_negative_refresh must be >= 1, got {self.hard_negative_refresh}")


class TwoTowerTrainTask(nn.Module):
    """Computes the multi-task retrieval + OverArch loss of a batch (as TorchRec's ``TwoTowerTrainTask``).

    Args:
        two_tower (TwoTower): the model.
        item_log_q (Tensor): float32 [N] log in-batch sampling probability of each item
            (:func:`~silverrec.models.losses.item_log_frequency`).
        config (LossConfig): weights and negatives.

    Call Args:
        features (KeyedJaggedTensor): both sides of B (user, positive item) pairs.
        item_rows (Tensor): int64 [B] positive item rows.
        labels (Tensor): float32 [B, T] task labels of the pairs (``schema.tasks`` order).

    Returns:
        Tuple[Tensor, Dict[str, Tensor]]: the scalar loss and its detached parts
        (``retrieval/<task>``, ``overarch/<task>``).
    """

    def __init__(self, two_tower: TwoTower, item_log_q: Tensor, config: Optional[LossConfig] = None) -> None:
        super().__init__()
        self.two_tower = two_tower
        self.config = config or LossConfig()
        unknown = sorted(set(self.config.task_weights) - set(two_tower.task_names))
        if unknown:
            raise ValueError(f"loss.task_weights names unknown task(s) {unknown}; tasks: {two_tower.task_names}")
        self.task_weights = [float(self.config.task_weights.get(t, 1.0)) for t in two_tower.task_names]
        self.loss = InBatchSoftmaxLoss(item_log_q)
        self.register_buffer("negative_bank", torch.empty(0), persistent=False)
        self.negative_index = None
        self.generator = torch.Generator().manual_seed(0)

    def reseed(self, seed: int) -> None:
        """Seeds the sampling of OverArch negatives (the trainer reseeds every step from the
        run seed and the step, so a resumed run samples what an uninterrupted one would)."""
        self.generator.manual_seed(seed)

    @torch.no_grad()
    def set_negative_bank(self, item_embeddings: Tensor) -> None:
        """Builds the hard-negative index over ``item_embeddings`` [N, D] (rows = item rows)."""
        from silverrec.retrieval.ivf_index import IVFInt8Index

        bank = item_embeddings.detach().float().cpu()
        self.negative_bank = bank.to(self.negative_bank.device)
        self.negative_index = IVFInt8Index.build(bank)

    def forward(self, features: KeyedJaggedTensor, item_rows: Tensor, labels: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        tt = self.two_tower
        u, v = tt(features)  # [B, T, D], [B, D]
        b, t = u.shape[0], u.shape[1]
        if labels.shape != (b, t):
            raise ValueError(f"labels must be [B, T] = [{b}, {t}], got {list(labels.shape)}")
        scale = tt.similarity.scale()
        parts: Dict[str, Tensor] = {}
        total = u.new_zeros(())
        oa_logits, oa_target = None, None
        r = b if not self.config.over_arch_rows else min(b, self.config.over_arch_rows)
        if tt.over_arch is not None and self.config.over_arch_weight > 0:
            oa_logits = self._over_arch_logits(u, v, item_rows, r)  # [R, C, T], column 0 = positive
            oa_target = torch.zeros(r, dtype=torch.long, device=u.device)
        for i, name in enumerate(tt.task_names):
            w = self.task_weights[i]
            retrieval = self.loss(u[:, i] @ v.t() * scale, item_rows, labels[:, i])
            parts[f"retrieval/{name}"] = retrieval.detach()
            task_loss = retrieval
            if oa_logits is not None:
                over = weighted_cross_entropy(oa_logits[:, :, i], oa_target, labels[:r, i])
                parts[f"overarch/{name}"] = over.detach()
                task_loss = task_loss + self.config.over_arch_weight * over
            total = total + w * task_loss
        return total, parts

    def _over_arch_logits(self, u: Tensor, v: Tensor, item_rows: Tensor, r: int) -> Tensor:
        """[R, 1 + S (+ H), T] logits of the first R rows' positives, sampled in-batch negatives
        (from all B rows) and hard negatives."""
        b = u.shape[0]
        s = min(self.config.sampled_negatives, b - 1)
        offsets = (torch.randperm(b - 1, generator=self.generator)[:s] + 1).to(u.device)  # distinct non-zero shifts: never the row itself
        cols = (torch.arange(r, device=u.device).unsqueeze(1) + offsets) % b  # [R, S]
        pos = item_rows[:r]
        cand_rows = torch.cat([pos.unsqueeze(1), item_rows[cols]], dim=1)  # [R, 1 + S]
        cand = torch.cat([v[:r].unsqueeze(1), v[cols]], dim=1)
        logits = self.two_tower.task_logits(u[:r], cand) - self.loss.item_log_q[cand_rows].unsqueeze(-1)
        hit = torch.cat([torch.zeros_like(cols[:, :1], dtype=torch.bool), cand_rows[:, 1:] == pos.unsqueeze(1)], 1)
        logits = logits.masked_fill(hit.unsqueeze(-1), float("-inf"))
        if self.config.hard_negatives and self.negative_index is not None:
            logits = torch.cat([logits, self._hard_negative_logits(u[:r], pos)], dim=1)
        return logits

    def _hard_negative_logits(self, u: Tensor, item_rows: Tensor) -> Tensor:
        """[B, H, T] logits of the items the index ranks highest for each row's first task
        (its positive and padding masked out; the bank's embeddings are constants)."""
        h = self.config.hard_negatives
        with torch.no_grad():
            _, rows = self.negative_index.search(u[:, 0].detach().float().cpu(), k=h + 1)
            rows = rows.to(u.device)
            bad = (rows < 0) | (rows == item_rows.unsqueeze(1))
            rows = rows.clamp_min(0)
        # keep H columns: drop the positive where it was found, else the last one
        order = torch.argsort(bad.to(torch.int8), dim=1, stable=True)[:, :h]
        rows, bad = rows.gather(1, order), bad.gather(1, order)
        logits = self.two_tower.task_logits(u, self.negative_bank[rows].to(u.dtype))
        return logits.masked_fill(bad.unsqueeze(-1), float("-inf"))
