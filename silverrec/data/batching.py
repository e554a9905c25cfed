"""Turns a :class:`RecDataset` into TorchRec ``KeyedJaggedTensor`` batches.

One KJT carries both sides of a batch of B (user, item) pairs: the user features, the user
history (``user__history``: item ids pooled from the ``item_id`` table) and the item features,
keys in ``schema.user_keys + schema.item_keys`` order. A side that is not needed (the user side
when embedding the item corpus, the item side when embedding users) has length-0 rows, so one
``EmbeddingBagCollection`` serves training, evaluation and publishing alike.

History semantics: a training example sees the user's up to ``history_length`` most recent
*earlier* training interactions (never its own target); evaluation on the validation split sees
the latest training items, on the test split the latest training + validation items. A user
with no earlier interaction has an empty history (pooled to zeros).
"""
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.data.dataset import FeatureTable, Interactions, JaggedColumn, RecDataset, gather_ranges
from silverrec.schema import Schema


class HistoryIndex:
    """Each user's time-ordered item sequence over a subset of interactions.

    Args:
        interactions (Interactions): all M interactions.
        indices (np.ndarray): int64 indices of the interactions that form histories (e.g. train).
        num_users (int): U.
    """

    def __init__(self, interactions: Interactions, indices: np.ndarray, num_users: int) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        users = interactions.user[indices]
        order = np.lexsort((indices, interactions.timestamp[indices], users))
        sorted_index = indices[order]  # interaction index at each sequence position
        self.items = interactions.item[sorted_index]  # [M_s] items in (user, time) order
        counts = np.bincount(users, minlength=num_users)
        self.offsets = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        # global sequence position of each indexed interaction (-1: not indexed)
        self._seq_position = np.full(len(interactions), -1, dtype=np.int64)
        self._seq_position[sorted_index] = np.arange(sorted_index.size)
        self._user = interactions.user

    def before(self, interaction_index: np.ndarray, max_length: int) -> JaggedColumn:
        """Per interaction (which must be indexed), the user's up to ``max_length`` earlier items."""
        idx = np.asarray(interaction_index, dtype=np.int64)
        seq = self._seq_position[idx]
        if np.any(seq < 0):
            raise ValueError("HistoryIndex.before: interaction not part of this history index")
        lengths = np.minimum(seq - self.offsets[self._user[idx]], max_length)
        return gather_ranges(self.items, seq - lengths, lengths)

    def latest(self, users: np.ndarray, max_length: int) -> JaggedColumn:
        """Per user, the up to ``max_length`` most recent items of the sequence."""
        users = np.asarray(users, dtype=np.int64)
        ends = self.offsets[users + 1]
        lengths = np.minimum(ends - self.offsets[users], max_length)
        return gather_ranges(self.items, ends - lengths, lengths)

    def all_items(self, users: np.ndarray) -> JaggedColumn:
        """Per user, every item of the sequence (e.g. the items to exclude at evaluation)."""
        users = np.asarray(users, dtype=np.int64)
        starts = self.offsets[users]
        return gather_ranges(self.items, starts, self.offsets[users + 1] - starts)


class FeatureBatcher:
    """Builds the two-sided KJT of a batch from feature tables.

    Args:
        schema (Schema): feature declarations (fixes the key order).
        users (FeatureTable): U rows.
        items (FeatureTable): N rows.
    """

    def __init__(self, schema: Schema, users: FeatureTable, items: FeatureTable) -> None:
        self.schema = schema
        self.users = users
        self.items = items
        self.keys: List[str] = list(schema.user_keys) + list(schema.item_keys)

    def kjt(
        self,
        batch_size: int,
        user_rows: Optional[np.ndarray] = None,
        history: Optional[JaggedColumn] = None,
        item_rows: Optional[np.ndarray] = None,
    ) -> KeyedJaggedTensor:
        """A KJT with every key; a side given as ``None`` gets length-0 rows.

        Args:
            batch_size (int): B.
            user_rows (Optional[np.ndarray]): int64 [B] user rows, or None.
            history (Optional[JaggedColumn]): B rows of history item ids, or None (empty).
            item_rows (Optional[np.ndarray]): int64 [B] item rows, or None.

        Returns:
            KeyedJaggedTensor: keys ``schema.user_keys + schema.item_keys``, stride B.
        """
        columns: List[Optional[JaggedColumn]] = []
        for f in self.schema.user_features:
            columns.append(None if user_rows is None else self.users.columns[f.name].take(user_rows))
        columns.append(history)
        for f in self.schema.item_features:
            columns.append(None if item_rows is None else self.items.columns[f.name].take(item_rows))
        values, lengths = [], []
        empty = np.zeros(batch_size, dtype=np.int64)
        for col in columns:
            if col is None:
                lengths.append(empty)
                continue
            if col.num_rows != batch_size:
                raise ValueError(f"FeatureBatcher.kjt: a column has {col.num_rows} rows, batch_size is {batch_size}")
            values.append(col.values)
            lengths.append(col.lengths)
        v = np.concatenate(values) if values else np.zeros(0, dtype=np.int64)
        return KeyedJaggedTensor(
            keys=self.keys,
            values=torch.from_numpy(v),
            lengths=torch.from_numpy(np.concatenate(lengths)),
            stride=batch_size,
        )


@dataclass
class Batch:
    """A training batch.

    Args:
        features (KeyedJaggedTensor): both sides, stride B.
        item_rows (torch.Tensor): int64 [B] positive item rows (for accidental-hit masking, logQ).
        labels (Dict[str, torch.Tensor]): float32 [B] per task.
    """

    features: KeyedJaggedTensor
    item_rows: torch.Tensor
    labels: Dict[str, torch.Tensor]


class TrainBatches:
    """Shuffled training batches; in a distributed run each rank takes its slice of every global batch.

    Args:
        dataset (RecDataset): the data.
        batch_size (int): global batch size G (must be divisible by ``world_size``).
        seed (int): shuffling seed (epoch e uses ``seed + e``).
        rank (int): this process's rank.
        world_size (int): number of processes.
    """

    def __init__(self, dataset: RecDataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not divisible by world_size={world_size}")
        train = dataset.split.training
        if train.size < batch_size:
            raise ValueError(f"the train split has {train.size} interactions, fewer than batch_size={batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.history = HistoryIndex(dataset.interactions, train, dataset.users.num_rows)
        self.batcher = FeatureBatcher(dataset.schema, dataset.users, dataset.items)
        self.train = train

    @property
    def steps_per_epoch(self) -> int:
        return self.train.size // self.batch_size  # the ragged tail is dropped (reshuffled next epoch)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches of one epoch, from ``start_step`` on (for resuming mid-epoch)."""
        perm = np.random.default_rng(self.seed + epoch).permutation(self.train)
        local = self.batch_size // self.world_size
        for step in range(start_step, self.steps_per_epoch):
            g = perm[step * self.batch_size : (step + 1) * self.batch_size]
            yield self.make_batch(g[self.rank * local : (self.rank + 1) * local])

    def make_batch(self, interaction_index: np.ndarray) -> Batch:
        it = self.dataset.interactions
        history = self.history.before(interaction_index, self.dataset.schema.history_length)
        item_rows = it.item[interaction_index]
        feats = self.batcher.kjt(
            batch_size=interaction_index.size,
            user_rows=it.user[interaction_index],
            history=history,
            item_rows=item_rows,
        )
        labels = {t: torch.from_numpy(it.labels[t][interaction_index]) for t in self.dataset.schema.task_names}
        return Batch(features=feats, item_rows=torch.from_numpy(item_rows), labels=labels)
