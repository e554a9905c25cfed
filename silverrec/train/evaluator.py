"""Full-corpus retrieval evaluation: exact inner-product top-K vs held-out interactions.

For a split (valid or test) the evaluated users are those with at least one held-out
interaction. Each user's query is built from their history up to the split (train items for
valid, train + valid items for test). Under the ``temporal`` protocol those same items are
excluded from the ranking, so a model is never credited for retrieving what the user already
consumed, and recall@K / NDCG@K are reported; under ``leave_last_out`` (one held-out item per
user) every other item the user interacted with is excluded and HR@K, NDCG@K and MRR are
reported (:mod:`silverrec.train.protocol`). The most-popular baseline ranks items by training
frequency with the same exclusions.
"""
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from silverrec.data.batching import FeatureBatcher, HistoryIndex
from silverrec.data.dataset import JaggedColumn, RecDataset
from silverrec.train.ground_truth import exact_ranks, exact_topk
from silverrec.train.distributed import DistContext, all_gather_rows
from silverrec.train.metrics import hit_rate_ndcg_mrr, recall_ndcg
from silverrec.train.protocol import PROTOCOLS


@dataclass
class EvalUsers:
    """The evaluated users of one split.

    Args:
        users (np.ndarray): int64 [U] user rows.
        history (JaggedColumn): U rows, the query history (latest ``history_length`` items).
        seen (JaggedColumn): U rows, the items excluded from the rankings (``temporal``: every
            item seen before the split; ``leave_last_out``: every other item of the user).
        heldout (JaggedColumn): U rows, the held-out item rows.
    """

    users: np.ndarray
    history: JaggedColumn
    seen: JaggedColumn
    heldout: JaggedColumn


def eval_users(dataset: RecDataset, split: str, max_users: int = 0, seed: int = 0,
               protocol: str = "temporal") -> EvalUsers:
    """Collects the users, histories, exclusions and held-out sets of ``split`` (valid or test).

    Args:
        max_users (int): evaluate a fixed random subset of this many users (0 = all).
        protocol (str): ``temporal`` or ``leave_last_out`` (which items are excluded).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if split not in ("valid", "test"):
        raise ValueError(f"evaluation split must be 'valid' or 'test', got {split!r}")
    sp, it = dataset.split, dataset.interactions
    held_idx = sp.get(split)
    if held_idx.size == 0:
        raise ValueError(f"the {split!r} split is empty: nothing to evaluate")
    before = sp.train if split == "valid" else np.concatenate([sp.train, sp.valid])
    num_users = dataset.users.num_rows
    seen_index = HistoryIndex(it, before, num_users)
    held_index = HistoryIndex(it, held_idx, num_users)
    users = np.unique(it.user[held_idx])
    if max_users and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    heldout = held_index.all_items(users)
    seen = seen_index.all_items(users)
    if protocol == "leave_last_out":
        if np.any(heldout.lengths != 1):
            raise ValueError(f"leave_last_out: the {split!r} split must hold one interaction per user, "
                             f"found up to {int(heldout.lengths.max())}; apply EvalConfig('leave_last_out') first")
        every = HistoryIndex(it, np.arange(len(it)), num_users).all_items(users)
        seen = _without_targets(every, heldout.values)
    return EvalUsers(users=users, history=seen_index.latest(users, dataset.schema.history_length), seen=seen,
                     heldout=heldout)


def _without_targets(items: JaggedColumn, targets: np.ndarray) -> JaggedColumn:
    """Each row of ``items`` without the row's target item (every occurrence of it)."""
    keep = items.values != np.repeat(targets, items.lengths)
    row_of = np.repeat(np.arange(items.num_rows), items.lengths)
    offsets = np.zeros(items.num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of[keep], minlength=items.num_rows), out=offsets[1:])
    return JaggedColumn(items.values[keep], offsets)


@torch.no_grad()
def embed_in_chunks(model: nn.Module, make_kjt, total: int, side: int, ctx: DistContext, chunk: int = 2048) -> torch.Tensor:
    """Embeds ``total`` rows with ``model`` (plain or DistributedModelParallel).

    Every rank runs the same number of equally sized forwards (the last chunk is padded by
    repeating rows), rank r taking chunks r, r + W, ...; the results are all-gathered.

    Args:
        make_kjt (Callable[[np.ndarray], KeyedJaggedTensor]): rows -> KJT of that batch.
        side (int): 0 to keep the user embeddings, 1 the item embeddings.

    Returns:
        Tensor: float32 [total, D] on the CPU, on every rank.
    """
    n_chunks = max(1, -(-total // chunk))
    rounds = -(-n_chunks // ctx.world_size)
    out = []
    for r in range(rounds):
        c = r * ctx.world_size + ctx.rank
        rows = np.arange(c * chunk, (c + 1) * chunk) % max(total, 1)  # padded chunks wrap around
        emb = model(make_kjt(rows).to(ctx.device))[side].float()
        out.append(all_gather_rows(emb, ctx).cpu())
    # round r gathered chunks r*W .. r*W + W-1 in rank order, so the concatenation is in row order
    return torch.cat(out)[:total]


def embed_items(model: nn.Module, batcher: FeatureBatcher, num_items: int, ctx: DistContext) -> torch.Tensor:
    """The item tower over the whole catalogue: float32 [N, D] on the CPU, row = item row."""
    return embed_in_chunks(model, lambda rows: batcher.kjt(rows.size, item_rows=rows), num_items, side=1, ctx=ctx)


def embed_eval_users(model: nn.Module, batcher: FeatureBatcher, users: EvalUsers, ctx: DistContext) -> torch.Tensor:
    """The user tower over evaluated users with their histories: float32 [U, T, D] on the CPU."""
    return embed_in_chunks(
        model,
        lambda rows: batcher.kjt(rows.size, user_rows=users.users[rows], history=users.history.take(rows)),
        users.users.size,
        side=0,
        ctx=ctx,
    )


class Evaluator:
    """Exact full-corpus evaluation of a two-tower model on one split.

    Args:
        dataset (RecDataset): the data.
        split (str): ``valid`` or ``test``.
        ks (Sequence[int]): cut-offs, e.g. (10, 50, 100); cut-offs beyond the corpus size N
            count every item.
        max_users (int): evaluate at most this many users (fixed random subset; 0 = all).
        protocol (str): ``temporal`` (recall@K, NDCG@K) or ``leave_last_out`` (HR@K, NDCG@K,
            MRR; the data set must carry the leave-last-out split).
    """

    def __init__(self, dataset: RecDataset, split: str, ks: Sequence[int] = (10, 50, 100), max_users: int = 0,
                 protocol: str = "temporal") -> None:
        self.dataset = dataset
        self.split = split
        self.ks = tuple(sorted(ks))
        self.protocol = protocol
        self.users = eval_users(dataset, split, max_users, protocol=protocol)
        self.batcher = FeatureBatcher(dataset.schema, dataset.users, dataset.items)
        train_items = dataset.interactions.item[dataset.split.training]
        counts = np.bincount(train_items, minlength=dataset.items.num_rows)
        self.popularity = torch.from_numpy(np.log1p(counts).astype(np.float32))

    def embed(self, model: nn.Module, ctx: DistContext) -> Tuple[torch.Tensor, torch.Tensor]:
        """User embeddings [U, T, D] (one per task) of the evaluated users and item embeddings
        [N, D] of the corpus."""
        return embed_eval_users(model, self.batcher, self.users, ctx), embed_items(model, self.batcher, self.dataset.items.num_rows, ctx)

    def evaluate(self, model: nn.Module, ctx: DistContext) -> Dict[str, float]:
        """recall@K and ndcg@K of exact inner-product retrieval (computed on every rank)."""
        was_training = model.training
        model.eval()
        try:
            u, v = self.embed(model, ctx)
        finally:
            model.train(was_training)
        return self.metrics_of(u, v)

    def metrics_of(self, user_embeddings: torch.Tensor, item_embeddings: torch.Tensor) -> Dict[str, float]:
        """The protocol's metrics of the first task's (``click``) embeddings ``user_embeddings``
        [U, T, D] (or [U, D]) against the held-out interactions: ``recall@K``, ``ndcg@K``
        (temporal) or ``hr@K``, ``ndcg@K``, ``mrr`` (leave_last_out)."""
        if user_embeddings.dim() == 3:
            user_embeddings = user_embeddings[:, 0]
        return self._rank(user_embeddings, item_embeddings, None)

    def popularity_baseline(self) -> Dict[str, float]:
        """The most-popular ranking (training frequency) with the same exclusions."""
        u = self.users.users.size
        return self._rank(torch.ones(u, 1), torch.zeros(self.popularity.numel(), 1), self.popularity)

    def _rank(self, queries: torch.Tensor, items: torch.Tensor, bias) -> Dict[str, float]:
        if self.protocol == "leave_last_out":
            ranks = exact_ranks(queries, items, torch.from_numpy(self.users.heldout.values), exclude=self.users.seen,
                                item_bias=bias)
            return hit_rate_ndcg_mrr(ranks, self.ks)
        n, kmax = items.shape[0], max(self.ks)
        _, rows = exact_topk(queries, items, min(kmax, n), exclude=self.users.seen, item_bias=bias)
        if kmax > n:  # cut-offs beyond the corpus: nothing more to retrieve
            rows = torch.cat([rows, rows.new_full((rows.shape[0], kmax - n), -1)], dim=1)
        return recall_ndcg(rows, self.users.heldout, self.ks)
