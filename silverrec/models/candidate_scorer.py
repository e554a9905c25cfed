"""Scoring retrieved candidates: per-task logits (dot product + OverArch), per-task predictions,
and the Value Model -- one definition shared by training, evaluation and the serving graph.

* ``task_logits``: ``<u_t, v> / tau`` for every task t (the retrieval similarity), plus the
  OverArch's learned correction when there is one;
* ``task_scores``: ``task_rates[t] * softmax_K(logits[..., t])`` over a query's valid candidates,
  an estimate of P(the user engages with the candidate and has task t's label | the list); over
  the list it sums to the task's mean label, so predictions of different tasks share one scale
  and a value formula like ``0.6*like + 0.3*share`` weighs expected labels;
* ``value``: the :class:`~silverrec.models.value_model.ValueModel` over those predictions.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from silverrec.models.over_arch import OverArch
from silverrec.models.similarity import Similarity
from silverrec.models.value_model import ValueModel


def task_logits(similarity: Similarity, over_arch: Optional[OverArch], u: Tensor, v: Tensor,
                history: Optional[Tensor] = None, items: Optional[Tensor] = None) -> Tensor:
    """Per-task logits of candidates: u [B, T, D] x v [B, K, D] -> float32 [B, K, T]; an OverArch
    with side features also reads the history item ids [B, L] and the candidates' item ids [B, K]."""
    logits = torch.einsum("btd,bkd->bkt", u.float(), v.float()) * similarity.scale()
    if over_arch is not None:
        logits = logits + over_arch(u, v, history, items).float()
    return logits


def task_scores(logits: Tensor, valid: Tensor, task_rates: Tensor) -> Tensor:
    """``task_rates[t]`` x softmax over the valid candidates: [B, K, T] (invalid ones score 0)."""
    masked = logits.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    p = torch.softmax(masked, dim=1).nan_to_num(0.0)  # a query without valid candidates: all 0
    return p * task_rates


def candidate_values(value_model: ValueModel, scores: Tensor, valid: Tensor) -> Tensor:
    """The Value Model over ``scores`` [B, K, T]; invalid candidates get -inf: [B, K]."""
    return value_model(scores).masked_fill(~valid, float("-inf"))


class CandidateScorer(nn.Module):
    """The re-scoring layers of the serving graph (copies of a trained model's modules).

    Args:
        similarity (Similarity): the model's similarity (its learned temperature).
        over_arch (Optional[OverArch]): the OverArch (None: dot product only).
        value_model (ValueModel): the value formula.
        task_rates (Tensor): float32 [T] mean label of each task.

    Call Args:
        u (Tensor): [B, T, D] user embeddings; v (Tensor): [B, K, D] candidate embeddings;
        valid (Tensor): bool [B, K]; history (Optional[Tensor]): int64 [B, L] history item ids and
        items (Optional[Tensor]): int64 [B, K] candidate item ids (-1 padding; read by an OverArch
        with side features).

    Returns:
        Tuple[Tensor, Tensor]: task predictions float32 [B, K, T] and values float32 [B, K]
        (-inf for invalid candidates).
    """

    def __init__(self, similarity: Similarity, over_arch: Optional[OverArch], value_model: ValueModel, task_rates: Tensor) -> None:
        super().__init__()
        self.similarity = similarity
        self.over_arch = over_arch
        self.value_model = value_model
        self.register_buffer("task_rates", task_rates.detach().float().clone())

    def forward(self, u: Tensor, v: Tensor, valid: Tensor, history: Optional[Tensor] = None,
                items: Optional[Tensor] = None):
        scores = task_scores(task_logits(self.similarity, self.over_arch, u, v, history, items), valid, self.task_rates)
        return scores, candidate_values(self.value_model, scores, valid)
