"""Training batches of whole user sequences, for the sequence user tower (next item at every position).

A user's training interactions, time-ordered, are ``i_1 .. i_n``; the example of that user is
its latest window: inputs ``i_{n-L} .. i_{n-1}`` and targets ``i_{n-L+1} .. i_n`` with
L = min(n - 1, H), so the state after ``i_j`` predicts ``i_{j+1}``. A batch holds B users; its
inputs go into the ``user__history`` key of a KJT (oldest first, the other keys empty) and its
targets and their task labels are right-aligned to the batch's longest input (``-1`` padding), as
:meth:`~silverrec.models.sequence_two_tower.SequenceTwoTower.sequence_states` lays out the states.
Users with fewer than 2 training interactions teach nothing and are left out.
"""
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.data.dataset import RecDataset, gather_ranges
from silverrec.schema import HISTORY, user_key

BUCKET = 16
"""Batches whose users are sorted by length together (see :meth:`SequenceBatches.epoch`)."""


@dataclass
class SequenceBatch:
    """B user sequences.

    Args:
        features (KeyedJaggedTensor): every schema key, stride B; ``user__history`` holds the inputs.
        targets (torch.Tensor): int64 [B, L] the next item after each input position, right-aligned (-1 padding).
        labels (torch.Tensor): float32 [B, L, T] the targets' task labels (0 at padding).
    """

    features: KeyedJaggedTensor
    targets: torch.Tensor
    labels: torch.Tensor


class SequenceBatches:
    """Shuffled batches of users' latest training windows.

    Args:
        dataset (RecDataset): the data (its split's train part).
        batch_size (int): B users per batch.
        seed (int): shuffling seed (epoch e uses ``seed + e``).

    Example::

        >>> from silverrec.data import synthetic_dataset
        >>> batches = SequenceBatches(synthetic_dataset("tiny"), batch_size=4)
        >>> batch = next(batches.epoch(0))
        >>> batch.targets.shape[0], batch.labels.shape[2] == len(batches.tasks)
        (4, True)
    """

    def __init__(self, dataset: RecDataset, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"trainer.batch_size must be >= 1, got {batch_size}")
        it, train = dataset.interactions, dataset.split.training
        order = train[np.lexsort((train, it.timestamp[train], it.user[train]))]  # (user, time) order
        counts = np.bincount(it.user[order], minlength=dataset.users.num_rows)
        self.offsets = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.order = order
        self.items = it.item[order]
        self.tasks = list(dataset.schema.task_names)
        self.labels = np.stack([it.labels[t][order] for t in self.tasks], axis=1).astype(np.float32)  # [M_train, T]
        self.users = np.flatnonzero(counts >= 2)
        if self.users.size < batch_size:
            raise ValueError(f"{self.users.size} users have 2 or more training interactions, fewer than "
                             f"trainer.batch_size={batch_size}")
        self.max_length = dataset.schema.history_length
        self.keys = list(dataset.schema.user_keys) + list(dataset.schema.item_keys)
        self.batch_size, self.seed = batch_size, seed

    @property
    def steps_per_epoch(self) -> int:
        return self.users.size // self.batch_size  # the ragged tail is dropped (reshuffled next epoch)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[SequenceBatch]:
        """The batches of one epoch, from ``start_step`` on (for resuming mid-epoch).

        Users are shuffled, then sorted by sequence length within groups of ``BUCKET`` batches and
        the batches shuffled again: batches of similar lengths carry less padding (a batch's width
        is its longest input)."""
        rng = np.random.default_rng(self.seed + epoch)
        b, steps = self.batch_size, self.steps_per_epoch
        perm = rng.permutation(self.users)[:steps * b]
        length = self.offsets[perm + 1] - self.offsets[perm]
        group = np.arange(perm.size) // (b * BUCKET)
        perm = perm[np.lexsort((length, group))].reshape(steps, b)[rng.permutation(steps)]
        for step in range(start_step, steps):
            yield self.make_batch(perm[step])

    def make_batch(self, users: np.ndarray) -> SequenceBatch:
        """The batch of these users' latest windows."""
        ends = self.offsets[users + 1]
        lengths = np.minimum(ends - self.offsets[users] - 1, self.max_length)  # inputs per user
        inputs = gather_ranges(self.items, ends - 1 - lengths, lengths)
        width = int(lengths.max())
        col = np.arange(width)
        pos = ends[:, None] - width + col  # the target interaction (sorted position) of each slot
        valid = col >= width - lengths[:, None]
        safe = np.where(valid, pos, 0)
        targets = np.where(valid, self.items[safe], -1)
        labels = self.labels[safe] * valid[..., None]
        b = users.size
        lens = [np.zeros(b, dtype=np.int64) if k != user_key(HISTORY) else lengths for k in self.keys]
        kjt = KeyedJaggedTensor(keys=self.keys, values=torch.from_numpy(inputs.values),
                                lengths=torch.from_numpy(np.concatenate(lens)), stride=b)
        return SequenceBatch(kjt, torch.from_numpy(targets), torch.from_numpy(labels))
