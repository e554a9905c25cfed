"""The serving form of the user tower: padded id slots -> one embedding per task.

Training feeds the shared TorchRec ``EmbeddingBagCollection`` a ``KeyedJaggedTensor``; a
serving graph wants fixed shapes and no host syncs, so a request carries each user's features
in fixed **slots** (``user_ids [B, S]``, -1 = empty): ``max_length`` slots per user feature, then
``history_length`` slots for the history, in ``schema.user_keys`` order. The encoder pools each
feature's slots from a copy of its trained table (sum for single-valued features, mean
otherwise, as the EBC does; an empty feature pools to zeros) and applies the trained user tower.
:func:`padded_user_encoder_from_two_tower` is the tested train -> serve converter.
"""
import copy
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedTensor

from silverrec.models.towers import UserTower
from silverrec.models.two_tower import TwoTower
from silverrec.schema import HISTORY, Schema, user_key


def user_slots(schema: Schema) -> List[Tuple[str, int]]:
    """``(key, number of slots)`` of each user key in request order (``schema.user_keys``)."""
    sizes = {user_key(f.name): f.max_length for f in schema.user_features}
    sizes[user_key(HISTORY)] = schema.history_length
    return [(k, sizes[k]) for k in schema.user_keys]


class PaddedUserEncoder(nn.Module):
    """Padded user id slots -> L2-normalised user embeddings, one per task.

    Args:
        keys (Sequence[str]): user keys in slot order.
        slots (Sequence[int]): slots per key.
        tables (Sequence[Tensor]): float32 ``[V_k, E]`` embedding table of each key (a table
            shared by two keys is passed twice and stored once).
        mean (Sequence[bool]): mean pooling (else sum) per key.
        user_tower (UserTower): the trained dense tower.

    Call Args:
        user_ids (Tensor): int64 ``[B, S]`` ids per slot (S = sum of slots), -1 = empty.

    Returns:
        Tensor: float32 ``[B, T, D]``.
    """

    def __init__(self, keys: Sequence[str], slots: Sequence[int], tables: Sequence[Tensor], mean: Sequence[bool], user_tower: UserTower) -> None:
        super().__init__()
        if not (len(keys) == len(slots) == len(tables) == len(mean)):
            raise ValueError("PaddedUserEncoder: keys, slots, tables and mean must have one entry per key")
        self.keys = list(keys)
        self.slots = [int(s) for s in slots]
        self.mean = [bool(m) for m in mean]
        self.num_slots = sum(self.slots)
        unique: List[Tensor] = []
        self.table_of: List[int] = []
        for t in tables:
            idx = next((i for i, u in enumerate(unique) if u is t), -1)
            if idx < 0:
                unique.append(t)
                idx = len(unique) - 1
            self.table_of.append(idx)
        self.tables = nn.ParameterList([nn.Parameter(t.detach().float().clone(), requires_grad=False) for t in unique])
        self.user_tower = user_tower

    def forward(self, user_ids: Tensor) -> Tensor:
        pooled = []
        start = 0
        for key, n, ti, mean in zip(self.keys, self.slots, self.table_of, self.mean):
            ids = user_ids[:, start : start + n]  # [B, n]
            start += n
            present = (ids >= 0).unsqueeze(-1)
            emb = self.tables[ti][ids.clamp(min=0)] * present  # [B, n, E]
            total = emb.sum(1)
            if mean:
                total = total / present.sum(1).clamp(min=1)
            pooled.append(total)
        return self.user_tower(KeyedTensor.from_tensor_list(self.keys, pooled))


def padded_user_encoder_from_two_tower(model: TwoTower, schema: Schema) -> PaddedUserEncoder:
    """A :class:`PaddedUserEncoder` holding copies of ``model``'s user-side weights."""
    table_of_key = {}
    for cfg in model.ebc.embedding_bag_configs():
        for f in cfg.feature_names:
            table_of_key[f] = cfg
    keys, slots = zip(*user_slots(schema))
    weights = {name: bag.weight.detach().cpu() for name, bag in model.ebc.embedding_bags.items()}
    tables = [weights[table_of_key[k].name] for k in keys]
    mean = [table_of_key[k].pooling == PoolingType.MEAN for k in keys]
    return PaddedUserEncoder(keys, slots, tables, mean, copy.deepcopy(model.user_tower))
