"""The serving form of the towers: padded id slots -> embeddings.

Training feeds the shared TorchRec ``EmbeddingBagCollection`` a ``KeyedJaggedTensor``; a
serving graph wants fixed shapes and no host syncs, so a request carries each user's features
in fixed **slots** (``user_ids [B, S]``, -1 = empty): ``max_length`` slots per user feature, then
``history_length`` slots for the history, in ``schema.user_keys`` order (items likewise:
``max_length`` slots per item feature). The encoder pools each feature's slots from a copy of
its trained table (sum for single-valued features, mean otherwise, as the EBC does; an empty
feature pools to zeros) and applies the trained tower. :func:`padded_user_encoder_from_two_tower`
and :func:`padded_item_encoder_from_two_tower` are the tested train -> serve converters (the
item one embeds items added after publish).
"""
import copy
from typing import List, Sequence, Tuple

from torch import Tensor, nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedTensor

from silverrec.models.two_tower import TwoTower
from silverrec.schema import HISTORY, Schema, item_key, user_key


def user_slots(schema: Schema) -> List[Tuple[str, int]]:
    """``(key, number of slots)`` of each user key in request order (``schema.user_keys``)."""
    sizes = {user_key(f.name): f.max_length for f in schema.user_features}
    sizes[user_key(HISTORY)] = schema.history_length
    return [(k, sizes[k]) for k in schema.user_keys]


def item_slots(schema: Schema) -> List[Tuple[str, int]]:
    """``(key, number of slots)`` of each item key in request order (``schema.item_keys``)."""
    return [(item_key(f.name), f.max_length) for f in schema.item_features]


class PaddedEncoder(nn.Module):
    """Padded id slots -> a tower's L2-normalised embeddings.

    Args:
        keys (Sequence[str]): the tower's keys in slot order.
        slots (Sequence[int]): slots per key.
        tables (Sequence[Tensor]): float32 ``[V_k, E]`` embedding table of each key (a table
            shared by two keys is passed twice and stored once).
        mean (Sequence[bool]): mean pooling (else sum) per key.
        tower (nn.Module): the trained dense tower (``UserTower`` or ``ItemTower``).

    Call Args:
        ids (Tensor): int64 ``[B, S]`` ids per slot (S = sum of slots), -1 = empty.

    Returns:
        Tensor: float32 ``[B, T, D]`` (user tower) or ``[B, D]`` (item tower).
    """

    def __init__(self, keys: Sequence[str], slots: Sequence[int], tables: Sequence[Tensor], mean: Sequence[bool], tower: nn.Module) -> None:
        super().__init__()
        if not (len(keys) == len(slots) == len(tables) == len(mean)):
            raise ValueError("PaddedEncoder: keys, slots, tables and mean must have one entry per key")
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
        self.tower = tower

    def forward(self, ids: Tensor) -> Tensor:
        pooled = []
        start = 0
        for key, n, ti, mean in zip(self.keys, self.slots, self.table_of, self.mean):
            slot = ids[:, start : start + n]  # [B, n]
            start += n
            present = (slot >= 0).unsqueeze(-1)
            emb = self.tables[ti][slot.clamp(min=0)] * present  # [B, n, E]
            total = emb.sum(1)
            if mean:
                total = total / present.sum(1).clamp(min=1)
            pooled.append(total)
        return self.tower(KeyedTensor.from_tensor_list(self.keys, pooled))


def _padded(model: TwoTower, slots: List[Tuple[str, int]], tower: nn.Module) -> PaddedEncoder:
    table_of_key = {}
    for cfg in model.ebc.embedding_bag_configs():
        for f in cfg.feature_names:
            table_of_key[f] = cfg
    keys, sizes = zip(*slots)
    weights = {name: bag.weight.detach().cpu() for name, bag in model.ebc.embedding_bags.items()}
    tables = [weights[table_of_key[k].name] for k in keys]
    mean = [table_of_key[k].pooling == PoolingType.MEAN for k in keys]
    return PaddedEncoder(keys, sizes, tables, mean, copy.deepcopy(tower))


def padded_user_encoder_from_two_tower(model: TwoTower, schema: Schema) -> nn.Module:
    """A :class:`PaddedEncoder` of user slots holding copies of ``model``'s user-side weights ([B, T, D]);
    for a sequence model, a :class:`~silverrec.models.padded_sequence_encoder.SequenceUserEncoder`."""
    from silverrec.models.sequence_two_tower import SequenceTwoTower

    if isinstance(model, SequenceTwoTower):
        from silverrec.models.padded_sequence_encoder import sequence_user_encoder

        keys, sizes = zip(*user_slots(schema))
        return sequence_user_encoder(model, keys, sizes)
    return _padded(model, user_slots(schema), model.user_tower)


def padded_item_encoder_from_two_tower(model: TwoTower, schema: Schema) -> nn.Module:
    """A :class:`PaddedEncoder` of item slots holding copies of ``model``'s item-side weights ([B, D]);
    for a sequence model, an :class:`~silverrec.models.padded_sequence_encoder.IdItemEncoder`."""
    from silverrec.models.sequence_two_tower import SequenceTwoTower

    if isinstance(model, SequenceTwoTower):
        from silverrec.models.padded_sequence_encoder import sequence_item_encoder

        return sequence_item_encoder(model)
    return _padded(model, item_slots(schema), model.item_tower)
