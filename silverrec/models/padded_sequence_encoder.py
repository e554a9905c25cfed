"""The serving form of the sequence model's towers: padded id slots -> embeddings.

A request carries a user in fixed slots (``user_ids [B, S]``, the layout of
:func:`~silverrec.models.padded_encoder.user_slots`: static features, then ``history_length`` history
slots holding the latest items oldest first, ``-1`` after them). :class:`SequenceUserEncoder` reads
the history slots, embeds them from a copy of the trained item-id table, moves each row's items to
the right end (the latest item at the last position, as in training) with one gather, and applies
the trained :class:`~silverrec.models.sequence_tower.SequenceUserTower`: fixed shapes, no host
syncs. :class:`IdItemEncoder` embeds items from their id slot (an item added after training has an
empty id slot and embeds to zeros). :func:`sequence_user_encoder` and :func:`sequence_item_encoder`
are the tested train -> serve converters; :mod:`silverrec.models.padded_encoder` dispatches to them.
"""
import copy
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from silverrec.models.sequence_tower import SequenceUserTower
from silverrec.schema import HISTORY, user_key


class SequenceUserEncoder(nn.Module):
    """User slots -> the sequence tower's [B, T, D] embeddings.

    Args:
        keys (Sequence[str]): the user keys in slot order (``schema.user_keys``; only the history is read).
        slots (Sequence[int]): slots per key (the history's equals the tower's ``max_length``).
        table (Tensor): float32 [N, E] the trained item-id table.
        tower (SequenceUserTower): the trained tower.

    Attributes:
        tables (nn.ParameterList): the one table; ``table_of`` maps every key to it (the layout
            :class:`~silverrec.models.padded_encoder.PaddedEncoder` exposes to the serving metadata).

    Call Args:
        ids (Tensor): int64 [B, S] user slots (-1 = empty).

    Returns:
        Tensor: float32 [B, T, D].
    """

    def __init__(self, keys: Sequence[str], slots: Sequence[int], table: Tensor, tower: SequenceUserTower) -> None:
        super().__init__()
        self.keys: List[str] = list(keys)
        self.slots = [int(s) for s in slots]
        hist = self.keys.index(user_key(HISTORY))
        if self.slots[hist] != tower.max_length:
            raise ValueError(f"{self.slots[hist]} history slots for a sequence tower of {tower.max_length} positions")
        self.start = sum(self.slots[:hist])
        self.length = self.slots[hist]
        self.num_slots = sum(self.slots)
        self.tables = nn.ParameterList([nn.Parameter(table.detach().float().clone(), requires_grad=False)])
        self.table_of = [0] * len(self.keys)
        self.tower = tower

    def forward(self, ids: Tensor) -> Tensor:
        hist = ids[:, self.start:self.start + self.length]  # [B, H] oldest first, -1 after
        n = (hist >= 0).sum(1, keepdim=True)  # [B, 1]
        col = torch.arange(self.length, device=ids.device).unsqueeze(0)
        src = col - (self.length - n)  # the slot that lands at position j (negative: padding)
        valid = src >= 0
        aligned = torch.where(valid, hist.gather(1, src.clamp(min=0)), torch.zeros_like(hist))
        x = self.tables[0][aligned.clamp(min=0)] * valid.unsqueeze(-1)  # [B, H, E]
        return self.tower(x, valid)


class IdItemEncoder(nn.Module):
    """Item slots -> the L2-normalised item-id embedding [B, D] (the sequence model's item tower).

    Args:
        table (Tensor): float32 [N, E] the trained item-id table.

    Call Args:
        ids (Tensor): int64 [B, S] item slots, the id slot first (-1 = empty).

    Returns:
        Tensor: float32 [B, D] (zeros for an empty id slot).

    Example::

        >>> IdItemEncoder(torch.tensor([[3.0, 4.0]]))(torch.tensor([[0, 5], [-1, 2]])).tolist()
        [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.detach().float().clone(), requires_grad=False)

    def forward(self, ids: Tensor) -> Tensor:
        item = ids[:, 0]
        emb = self.table[item.clamp(min=0)] * (item >= 0).unsqueeze(-1)
        return F.normalize(emb, dim=-1)


def sequence_user_encoder(model: nn.Module, keys: Sequence[str], slots: Sequence[int]) -> SequenceUserEncoder:
    """A :class:`SequenceUserEncoder` with copies of a ``SequenceTwoTower``'s user-side weights."""
    return SequenceUserEncoder(keys, slots, model.item_table.detach().cpu(), copy.deepcopy(model.user_tower))


def sequence_item_encoder(model: nn.Module) -> IdItemEncoder:
    """An :class:`IdItemEncoder` with a copy of a ``SequenceTwoTower``'s item-id table."""
    return IdItemEncoder(model.item_table.detach().cpu())
