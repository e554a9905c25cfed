"""The training task: the two-tower model plus its losses, the unit DistributedModelParallel wraps.

Losses of a batch of B (user, positive item) pairs with labels ``[B, T]``:

* **retrieval, per task** -- in-batch softmax of task t's user embedding against the B items
  (logQ-corrected, accidental hits masked), each row weighted by its task-t label, so a row
  counts as a positive of ``like`` only if the user liked the item (``click`` is all ones);
* **OverArch, per task** -- the same softmax over a smaller candidate list per row, scored by
  :meth:`TwoTower.task_logits` (dot product + learned OverArch correction), with negatives
  chosen by ``over_arch_negatives``:

  - ``"in_batch"``: ``sampled_negatives`` other in-batch items (logQ-corrected), and
    optionally ``hard_negatives`` items mined by a candidate search over the current item
    embeddings (refreshed by the trainer, see :meth:`TwoTowerTrainTask.set_negative_bank`);
  - ``"pool"``: like the serving candidates. Each row's pool is the top-``pool_size`` items of
    that search for the row's first-task embedding, the user's history left out (as seen items
    are at serving); ``sampled_negatives`` negatives are drawn uniformly from the pool, and
    only rows whose positive is in the pool train the OverArch. The OverArch only ever
    re-ranks a pool: in-batch negatives are far easier than serving candidates, and pool
    negatives against positives from anywhere teach it that a high dot product is bad. The
    pool's items, positive included, are scored from the bank's embeddings (as of its last
    rebuild), as the serving graph scores its candidates from the published item cache.

  With ``over_arch_detach`` the OverArch loss sees stop-gradients of the tower outputs and of
  the dot logit, so it trains the OverArch alone and the towers cannot absorb its job.

  An OverArch with side features reads each row's history item ids (the ``user__history`` of the
  batch: the user's latest training items before the example, as served) and the candidates'
  item rows.

The total is ``sum_t task_weight[t] * (retrieval_t + over_arch_weight * overarch_t)``; the towers
are trained jointly with the OverArch (unless ``over_arch_detach``).

The candidate search comes from outside: the task is given a :data:`SearchBuilder` (the trainer
passes :func:`silverrec.train.trainer.ivf_candidate_search`, an ``IVFInt8Index`` over the bank, so
mining uses the served index), and ``models/`` never imports the retrieval layer.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.losses import InBatchSoftmaxLoss, weighted_cross_entropy
from silverrec.models.two_tower import TwoTower
from silverrec.schema import HISTORY, user_key

NEGATIVE_MODES = ("in_batch", "pool")

CandidateSearch = Callable[[Tensor, int], Tensor]
"""``search(queries, k) -> rows``: the top-``k`` bank rows for each query by inner product.

``queries`` float32 ``[B, D]`` on the bank's device (no copy to the host per step); ``rows`` int64 ``[B, k]``, rows of the item bank the
search was built over, best first, ``-1`` where fewer than ``k`` were found.
"""

SearchBuilder = Callable[[Tensor], CandidateSearch]
"""``build(bank) -> search``: a :data:`CandidateSearch` over ``bank`` float32 ``[N, D]`` (on the training device), row
``r`` being item row ``r``; called once per refresh of the bank, then searched every step."""


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
        hard_negative_refresh (int): steps between rebuilds of the index (``hard_negatives`` and
            ``"pool"`` mode; the trainer also builds it at the start and on resume).
        over_arch_negatives (str): ``"in_batch"`` (sampled in-batch + ``hard_negatives`` mined)
            or ``"pool"`` (``sampled_negatives`` drawn from each row's top-``pool_size`` index
            candidates, as served; see the module docstring).
        pool_size (int): P, the candidate pool of a row in ``"pool"`` mode.
        over_arch_detach (bool): the OverArch loss does not train the towers (stop-gradient).
        in_batch_negatives (int): R, targets of the batch drawn as shared negatives of the sequence
            tower's next-item softmax (:mod:`silverrec.models.sequence_train_task`; the pooled
            tower uses the whole batch).
        uniform_negatives (int): S, items drawn uniformly per batch as further shared negatives of
            that softmax (both log-Q corrected).
    """

    task_weights: Dict[str, float] = field(default_factory=dict)
    over_arch_weight: float = 1.0
    over_arch_rows: int = 256
    sampled_negatives: int = 31
    hard_negatives: int = 0
    hard_negative_refresh: int = 500
    over_arch_negatives: str = "in_batch"
    pool_size: int = 500
    over_arch_detach: bool = False
    in_batch_negatives: int = 1024
    uniform_negatives: int = 512

    def __post_init__(self) -> None:
        self.task_weights = dict(self.task_weights)
        for name, w in self.task_weights.items():
            if not w >= 0:
                raise ValueError(f"loss.task_weights.{name} must be >= 0, got {w}")
        if not self.over_arch_weight >= 0:
            raise ValueError(f"loss.over_arch_weight must be >= 0, got {self.over_arch_weight}")
        for name in ("over_arch_rows", "sampled_negatives", "hard_negatives", "in_batch_negatives",
                     "uniform_negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.hard_negative_refresh < 1:
            raise ValueError(f"loss.hard_negative_refresh must be >= 1, got {self.hard_negative_refresh}")
        if self.over_arch_negatives not in NEGATIVE_MODES:
            raise ValueError(f"loss.over_arch_negatives must be one of {NEGATIVE_MODES}, got {self.over_arch_negatives!r}")
        if self.pool_size < 1:
            raise ValueError(f"loss.pool_size must be >= 1, got {self.pool_size}")
        if self.over_arch_negatives == "pool" and self.sampled_negatives < 1:
            raise ValueError("loss.over_arch_negatives=pool draws loss.sampled_negatives negatives from the pool; "
                             f"it must be >= 1, got {self.sampled_negatives}")

    @property
    def needs_index(self) -> bool:
        """Whether the loss mines an index over the item embeddings (the trainer builds it)."""
        return self.over_arch_negatives == "pool" or self.hard_negatives > 0


class TwoTowerTrainTask(nn.Module):
    """Computes the multi-task retrieval + OverArch loss of a batch (as TorchRec's ``TwoTowerTrainTask``).

    Args:
        two_tower (TwoTower): the model.
        item_log_q (Tensor): float32 [N] log in-batch sampling probability of each item
            (:func:`~silverrec.models.losses.item_log_frequency`).
        config (LossConfig): weights and negatives.
        search_builder (Optional[SearchBuilder]): builds the candidate search over the item
            bank that mines ``hard_negatives`` and ``"pool"`` candidates (needed when
            ``config.needs_index``; the trainer passes
            :func:`~silverrec.train.trainer.ivf_candidate_search`).
        history_width (Optional[int]): L, the most history items a row carries
            (``schema.history_length``; the trainer passes it), the width of the OverArch's
            history matrix: a shape known on the host, so a step reads no device value. None:
            the batch's longest history (one host sync per step).

    Call Args:
        features (KeyedJaggedTensor): both sides of B (user, positive item) pairs.
        item_rows (Tensor): int64 [B] positive item rows.
        labels (Tensor): float32 [B, T] task labels of the pairs (``schema.tasks`` order).

    Returns:
        Tuple[Tensor, Dict[str, Tensor]]: the scalar loss and its detached parts
        (``retrieval/<task>``, ``overarch/<task>``).
    """

    def __init__(self, two_tower: TwoTower, item_log_q: Tensor, config: Optional[LossConfig] = None,
                 search_builder: Optional[SearchBuilder] = None, history_width: Optional[int] = None) -> None:
        super().__init__()
        self.two_tower = two_tower
        self.config = config or LossConfig()
        unknown = sorted(set(self.config.task_weights) - set(two_tower.task_names))
        if unknown:
            raise ValueError(f"loss.task_weights names unknown task(s) {unknown}; tasks: {two_tower.task_names}")
        self.task_weights = [float(self.config.task_weights.get(t, 1.0)) for t in two_tower.task_names]
        self.loss = InBatchSoftmaxLoss(item_log_q)
        self.register_buffer("negative_bank", torch.empty(0), persistent=False)
        self.search_builder = search_builder
        self.negative_search: Optional[CandidateSearch] = None
        self.history_width = history_width
        self.generator = torch.Generator().manual_seed(0)
        self._seed = 0
        self._device_generator: Optional[torch.Generator] = None

    def reseed(self, seed: int) -> None:
        """Seeds the sampling of OverArch negatives (the trainer reseeds every step from the
        run seed and the step, so a resumed run samples what an uninterrupted one would)."""
        self.generator.manual_seed(seed)
        self._seed, self._device_generator = seed, None

    def _generator(self, device: torch.device) -> Optional[torch.Generator]:
        """The sampling generator on ``device`` (the CPU one on the CPU; on a GPU one seeded with
        the same seed, so the draws stay on the device: no copy, no host sync; none on ``meta``,
        which has no values to draw)."""
        if device.type == "cpu":
            return self.generator
        if device.type == "meta":
            return None
        if self._device_generator is None or self._device_generator.device != device:
            self._device_generator = torch.Generator(device=device).manual_seed(self._seed)
        return self._device_generator

    @torch.no_grad()
    def set_negative_bank(self, item_embeddings: Tensor) -> None:
        """Keeps ``item_embeddings`` as the negative bank and builds the candidate search over it.

        Args:
            item_embeddings (Tensor): float ``[N, D]``, row ``r`` the embedding of item row ``r``.
        """
        if self.search_builder is None:
            raise RuntimeError("TwoTowerTrainTask has no search_builder to mine negatives with: pass one to the "
                               "constructor (the trainer passes silverrec.train.trainer.ivf_candidate_search)")
        self.negative_bank = item_embeddings.detach().float().to(self.negative_bank.device)
        # built on the bank's device, so each step searches there (no copy of the queries to the host)
        self.negative_search = self.search_builder(self.negative_bank)

    def forward(self, features: KeyedJaggedTensor, item_rows: Tensor, labels: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        tt = self.two_tower
        u, v = tt(features)  # [B, T, D], [B, D]
        b, t = u.shape[0], u.shape[1]
        if labels.shape != (b, t):
            raise ValueError(f"labels must be [B, T] = [{b}, {t}], got {list(labels.shape)}")
        scale = tt.similarity.scale()
        parts: Dict[str, Tensor] = {}
        total = u.new_zeros(())
        oa_logits, oa_target, oa_rows = None, None, None
        r = b if not self.config.over_arch_rows else min(b, self.config.over_arch_rows)
        if tt.over_arch is not None and self.config.over_arch_weight > 0:
            pool_mode = self.config.over_arch_negatives == "pool"
            history = self._history(features, r) if pool_mode or tt.uses_history else item_rows.new_full((r, 1), -1)
            if pool_mode:
                oa_logits, oa_rows = self._pool_logits(u, item_rows, history, r)
            else:
                oa_logits = self._over_arch_logits(u, v, item_rows, r, history)  # [R, C, T], column 0 = positive
            oa_target = torch.zeros(r, dtype=torch.long, device=u.device)
        for i, name in enumerate(tt.task_names):
            w = self.task_weights[i]
            retrieval = self.loss(u[:, i] @ v.t() * scale, item_rows, labels[:, i])
            parts[f"retrieval/{name}"] = retrieval.detach()
            task_loss = retrieval
            if oa_logits is not None:
                row_w = labels[:r, i] if oa_rows is None else labels[:r, i] * oa_rows
                over = weighted_cross_entropy(oa_logits[:, :, i], oa_target, row_w)
                parts[f"overarch/{name}"] = over.detach()
                task_loss = task_loss + self.config.over_arch_weight * over
            total = total + w * task_loss
        return total, parts

    def _score(self, u: Tensor, cand: Tensor, history: Optional[Tensor] = None, cand_rows: Optional[Tensor] = None) -> Tensor:
        """:meth:`TwoTower.task_logits` of u [R, T, D] x cand [R, C, D] (history [R, L] and
        cand_rows [R, C] item rows: for side features); with ``over_arch_detach`` only the
        OverArch receives gradients."""
        tt = self.two_tower
        if tt.uses_history:
            history, cand_rows = history.to(u.device), cand_rows.to(u.device)
        if not self.config.over_arch_detach:
            return tt.task_logits(u, cand, history=history, items=cand_rows)
        u, cand = u.detach(), cand.detach()
        with torch.no_grad():
            dot = tt.task_logits(u, cand, over_arch=False)
        return dot + tt.over_arch(u, cand, history, cand_rows).float()

    def _history(self, features: KeyedJaggedTensor, r: int) -> Tensor:
        """int64 [R, L] the first R rows' history item rows (-1 padding; L = ``history_width``, or
        the longest row's length when that is None, which reads it on the host)."""
        jt = features[user_key(HISTORY)]
        lengths = jt.lengths()[:r]
        if self.history_width is not None:  # a shape known on the host: no sync
            width = max(self.history_width, 1)
        else:
            width = max(int(lengths.max()) if lengths.numel() else 0, 1)
        offsets = torch.cumsum(lengths, 0) - lengths
        col = torch.arange(width, device=lengths.device)
        idx = offsets.unsqueeze(1) + col
        present = col < lengths.unsqueeze(1)
        values = jt.values()
        return torch.where(present, values[idx.clamp_max(max(values.numel() - 1, 0))] if values.numel() else idx,
                           torch.full_like(idx, -1))

    def _pool_logits(self, u: Tensor, item_rows: Tensor, history: Tensor, r: int) -> Tuple[Tensor, Tensor]:
        """``"pool"`` mode: [R, 1 + S, T] logits of each row's positive and S negatives drawn
        uniformly from its top-P search candidates (history left out), and float [R] whether the
        positive is in the pool (the row weight)."""
        if self.negative_search is None:
            raise RuntimeError("loss.over_arch_negatives=pool needs the candidate search: call "
                               "TwoTowerTrainTask.set_negative_bank(item_embeddings) first (the trainer does)")
        s = self.config.sampled_negatives
        pos = item_rows[:r]
        with torch.no_grad():
            # the top P + L (history length) unfiltered, then the history dropped: much faster than a filtered search
            n = self.negative_bank.shape[0]
            rows = self.negative_search(u[:r, 0].detach().float(), min(self.config.pool_size + history.shape[1], n))
            rows, hist = rows.to(u.device), history.to(u.device)  # [R, P + L], [R, L]
            seen = (rows.unsqueeze(2) == hist.unsqueeze(1)).any(2) | (rows < 0)
            valid = ~seen & (torch.cumsum((~seen).int(), dim=1) <= self.config.pool_size)  # [R, P + L]: the pool
            in_pool = ((rows == pos.unsqueeze(1)) & valid).any(1).float()
            weights = valid.float()
            weights[:, 0] += (~valid.any(1)).float()  # an empty pool: draw column 0, masked below
            pick = torch.multinomial(weights, s, replacement=True, generator=self._generator(weights.device))  # [R, S]
            negs = rows.gather(1, pick)
            bad = ~valid.gather(1, pick) | (negs == pos.unsqueeze(1))  # outside the pool, or the positive drawn
            cand = torch.cat([pos.unsqueeze(1), negs.clamp_min(0)], dim=1)  # [R, 1 + S]
        logits = self._score(u[:r], self.negative_bank[cand].to(u.dtype), hist, cand)
        bad = torch.cat([torch.zeros_like(bad[:, :1]), bad], dim=1)
        return logits.masked_fill(bad.unsqueeze(-1), float("-inf")), in_pool

    def _over_arch_logits(self, u: Tensor, v: Tensor, item_rows: Tensor, r: int, history: Optional[Tensor] = None) -> Tensor:
        """[R, 1 + S (+ H), T] logits of the first R rows' positives, sampled in-batch negatives
        (from all B rows) and hard negatives."""
        b = u.shape[0]
        s = min(self.config.sampled_negatives, b - 1)
        offsets = torch.randperm(b - 1, generator=self._generator(u.device), device=u.device)[:s] + 1  # distinct non-zero shifts: never the row itself
        cols = (torch.arange(r, device=u.device).unsqueeze(1) + offsets) % b  # [R, S]
        pos = item_rows[:r]
        cand_rows = torch.cat([pos.unsqueeze(1), item_rows[cols]], dim=1)  # [R, 1 + S]
        cand = torch.cat([v[:r].unsqueeze(1), v[cols]], dim=1)
        logits = self._score(u[:r], cand, history, cand_rows) - self.loss.item_log_q[cand_rows].unsqueeze(-1)
        hit = torch.cat([torch.zeros_like(cols[:, :1], dtype=torch.bool), cand_rows[:, 1:] == pos.unsqueeze(1)], 1)
        logits = logits.masked_fill(hit.unsqueeze(-1), float("-inf"))
        if self.config.hard_negatives and self.negative_search is not None:
            logits = torch.cat([logits, self._hard_negative_logits(u[:r], pos, history)], dim=1)
        return logits

    def _hard_negative_logits(self, u: Tensor, item_rows: Tensor, history: Optional[Tensor] = None) -> Tensor:
        """[B, H, T] logits of the items the search ranks highest for each row's first task
        (its positive and padding masked out; the bank's embeddings are constants)."""
        h = self.config.hard_negatives
        with torch.no_grad():
            rows = self.negative_search(u[:, 0].detach().float(), h + 1)
            rows = rows.to(u.device)
            bad = (rows < 0) | (rows == item_rows.unsqueeze(1))
            rows = rows.clamp_min(0)
        # keep H columns: drop the positive where it was found, else the last one
        order = torch.argsort(bad.to(torch.int8), dim=1, stable=True)[:, :h]
        rows, bad = rows.gather(1, order), bad.gather(1, order)
        logits = self._score(u, self.negative_bank[rows].to(u.dtype), history, rows)
        return logits.masked_fill(bad.unsqueeze(-1), float("-inf"))
