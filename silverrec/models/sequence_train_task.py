"""The training task of the sequence model: next-item sampled softmax at every position.

For a batch of B user sequences with P target positions (each input position whose next item is
known, :mod:`silverrec.data.sequence_batches`), the states of the P positions go through the task
heads and each is scored against its own target and one shared set of negatives: the targets of
``loss.in_batch_negatives`` positions of the batch drawn at random (in-batch negatives, so drawn in
proportion to item frequency) and ``loss.uniform_negatives`` items drawn uniformly from the
catalogue (sampled negatives). Every logit of item c, the positive's included, is corrected by
``- log E_c``, E_c = R f_c + S / N the expected number of draws of c (f_c its share of training
interactions, R and S the two sample sizes): the log-Q correction (Yi et al. 2019) for the mixture
of the two samplers, so popular items are not over-penalised for being everyone's negative. A
negative that is the row's own target (an accidental hit) is masked. Task t's loss weights each
position by the target's task-t label; a task with weight 0 is skipped.

With an OverArch, the last position of each sequence (the state a served user has) also trains it
on a candidate pool, as served: the top ``loss.pool_size`` items by the current (detached)
embeddings with the user's inputs left out; ``loss.sampled_negatives`` negatives are drawn from the
pool, and rows whose target is not in the pool are skipped (as ``loss.over_arch_negatives=pool``
for the pooled model). With ``loss.over_arch_detach`` the OverArch loss trains the OverArch alone.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from silverrec.data.sequence_batches import SequenceBatch
from silverrec.models.losses import weighted_cross_entropy
from silverrec.models.sequence_two_tower import SequenceTwoTower
from silverrec.models.train_task import LossConfig
from silverrec.schema import HISTORY, user_key


class SequenceTrainTask(nn.Module):
    """Computes the multi-task next-item loss (and the OverArch loss) of a :class:`SequenceBatch`.

    Args:
        two_tower (SequenceTwoTower): the model.
        item_log_q (Tensor): float32 [N] log share of each item among training interactions.
        config (LossConfig): task weights, ``uniform_negatives``, OverArch settings.

    Call Args:
        batch (SequenceBatch): B sequences.

    Returns:
        Tuple[Tensor, Dict[str, Tensor]]: the scalar loss and its detached parts
        (``retrieval/<task>``, ``overarch/<task>``).
    """

    def __init__(self, two_tower: SequenceTwoTower, item_log_q: Tensor, config: LossConfig) -> None:
        super().__init__()
        self.two_tower = two_tower
        self.config = config
        unknown = sorted(set(config.task_weights) - set(two_tower.task_names))
        if unknown:
            raise ValueError(f"loss.task_weights names unknown task(s) {unknown}; tasks: {two_tower.task_names}")
        self.task_weights = [float(config.task_weights.get(t, 1.0)) for t in two_tower.task_names]
        if config.in_batch_negatives + config.uniform_negatives < 1:
            raise ValueError("loss.in_batch_negatives + loss.uniform_negatives must be >= 1 for the sequence tower, "
                             f"got {config.in_batch_negatives} + {config.uniform_negatives}")
        self.register_buffer("item_log_q", item_log_q.float(), persistent=False)
        self.generator = torch.Generator().manual_seed(0)

    def reseed(self, seed: int) -> None:
        """Seeds the negative sampling (the trainer reseeds every step from the run seed and the step)."""
        self.generator.manual_seed(seed)

    def forward(self, batch: SequenceBatch) -> Tuple[Tensor, Dict[str, Tensor]]:
        tt = self.two_tower
        targets, labels = batch.targets, batch.labels  # [B, L], [B, L, T]
        states = tt.sequence_states(batch.features, targets.shape[1])  # [B, L, E]
        pick = targets >= 0
        u = tt.user_tower.heads(states[pick])  # [P, T, D]
        tgt, lab = targets[pick], labels[pick]  # [P], [P, T]
        negs, log_q_negs = self._negatives(tgt)  # [C], [C]
        table = tt.item_table
        v_pos = F.normalize(F.embedding(tgt, table).float(), dim=-1)  # [P, D]
        v_neg = F.normalize(F.embedding(negs, table).float(), dim=-1)  # [C, D]
        active = [i for i, w in enumerate(self.task_weights) if w > 0]  # tasks with weight 0 are skipped
        us = (u[:, active] * tt.similarity.scale()).transpose(0, 1)  # [T', P, D]
        pos_logit = (us * v_pos).sum(-1) - self._log_expected(tgt)  # [T', P]
        neg_logits = torch.matmul(us, v_neg.t()).sub_(log_q_negs)  # [T', P, C]
        neg_logits.masked_fill_((negs.unsqueeze(0) == tgt.unsqueeze(1)).unsqueeze(0), float("-inf"))  # accidental hits
        # cross-entropy with the positive in column 0, without materialising [positive, negatives]
        nll = torch.logaddexp(pos_logit, torch.logsumexp(neg_logits, dim=-1)) - pos_logit  # [T', P]
        parts: Dict[str, Tensor] = {}
        total = u.new_zeros(())
        oa = self._over_arch_logits(batch, states) if tt.over_arch is not None and self.config.over_arch_weight > 0 else None
        for j, i in enumerate(active):
            name, w = tt.task_names[i], self.task_weights[i]
            loss = (nll[j] * lab[:, i]).sum() / lab[:, i].sum().clamp_min(1e-6)
            parts[f"retrieval/{name}"] = loss.detach()
            if oa is not None:
                oa_logits, row_w, last_labels = oa
                over = weighted_cross_entropy(oa_logits[:, :, i], torch.zeros_like(row_w, dtype=torch.long),
                                              row_w * last_labels[:, i])
                parts[f"overarch/{name}"] = over.detach()
                loss = loss + self.config.over_arch_weight * over
            total = total + w * loss
        return total, parts

    def _log_expected(self, items: Tensor) -> Tensor:
        """log E_c = log(R f_c + S / N) of items [*] (the log-Q correction)."""
        n = self.item_log_q.shape[0]
        r, s = self.config.in_batch_negatives, self.config.uniform_negatives
        return (r * self.item_log_q[items].exp() + s / n).log()

    @torch.no_grad()
    def _negatives(self, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """The shared negatives int64 [C] (R in-batch targets, then S uniform draws) and log E_c [C]."""
        n = self.item_log_q.shape[0]
        r, s = self.config.in_batch_negatives, self.config.uniform_negatives
        in_batch = targets[torch.randint(targets.shape[0], (r,), generator=self.generator).to(targets.device)]
        drawn = torch.randint(n, (s,), generator=self.generator).to(targets.device)
        negs = torch.cat([in_batch, drawn])
        return negs, self._log_expected(negs)

    def _over_arch_logits(self, batch: SequenceBatch, states: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """[B, 1 + S, T] OverArch logits of each sequence's last target against S negatives from its
        candidate pool, float [B] whether the target is in the pool, and the last targets' labels [B, T]."""
        tt, cfg = self.two_tower, self.config
        hist = batch.features[user_key(HISTORY)]
        lengths = hist.lengths()
        width = max(int(lengths.max()), 1)
        history = torch.full((lengths.shape[0], width), -1, dtype=torch.int64)
        col = torch.arange(width)
        mask = col < lengths.unsqueeze(1)
        history[mask] = hist.values()  # oldest first, as served (-1 padding)
        pos, last_labels = batch.targets[:, -1], batch.labels[:, -1]
        u = tt.user_tower.heads(states[:, -1])  # [B, T, D]
        table = F.normalize(tt.item_table.detach().float(), dim=-1)  # [N, D]
        n = table.shape[0]
        s = cfg.sampled_negatives
        with torch.no_grad():
            scores = u[:, 0].detach() @ table.t()  # [B, N]
            scores.scatter_(1, history.clamp_min(0), torch.where(mask, float("-inf"), scores.gather(1, history.clamp_min(0))))
            rows = scores.topk(min(cfg.pool_size, n), dim=1).indices  # [B, P]
            in_pool = (rows == pos.unsqueeze(1)).any(1).float()
            pick = torch.randint(rows.shape[1], (rows.shape[0], s), generator=self.generator)
            negs = rows.gather(1, pick)
            bad = negs == pos.unsqueeze(1)
            cand = torch.cat([pos.unsqueeze(1), negs], dim=1)  # [B, 1 + S]
        v = table[cand]
        if cfg.over_arch_detach:
            u = u.detach()
        logits = tt.task_logits(u, v, history=history, items=cand)
        bad = torch.cat([torch.zeros_like(bad[:, :1]), bad], dim=1)
        return logits.masked_fill(bad.unsqueeze(-1), float("-inf")), in_pool, last_labels
