"""Side features of (user, candidate) pairs, derived from the schema's item attributes.

The OverArch over ``[u, v, u*v]`` sees the towers' embeddings only; an inner product cannot state
"the user has watched many items of this candidate's category" or "this release is newer than
anything the user watched" (``benchmarks/overarch_side_features.py``). These features state such
effects directly, for any schema: each attribute named in ``model.over_arch.side_features`` (or
every item attribute, with ``all``) gives columns by its kind, with H the user's history (the
history item ids the towers and the serving graph receive, -1 padding) and i the candidate:

===============  ============================================================================
attribute kind   columns
===============  ============================================================================
categorical      share of H holding any of i's values; log(1 + that count); [the count > 0]
(single- or      (for a multi-valued attribute, e.g. genres, an item "holds" a value when it is
multi-valued)    among its values)
numeric (every   (x(i) - max x(H)) / s; (x(i) - mean x(H)) / s; [x(i) > max x(H)];
vocabulary value (max x(H) - mean x(H)) / s -- s the attribute's standard deviation over the
is a number)     items, x the item's value (the mean of its values if it has several)
``popularity``   log(1 + training interactions of i), standardised over the items
===============  ============================================================================

Shares and counts are over the known history items (ids in ``[0, N)``); an empty history gives
0. A candidate id outside ``[0, N)`` (an item added after publish, which the table does not know)
matches no history item, gets numeric features 0 and the popularity of an item without
interactions; so does an item without a value of an attribute. An item updated after publish
keeps its published attributes here until the next publish.

No attribute name is written in this module: :func:`side_feature_specs` reads the kinds from the
schema. The tables are buffers filled from the data by :meth:`SideFeatures.set_items_from` (the
trainer does it), so a checkpoint and the exported serving graph carry them.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from silverrec.data.dataset import JaggedColumn
from silverrec.schema import ITEM_ID, Feature, Schema

POPULARITY = "popularity"
ALL = "all"
KINDS = ("categorical", "numeric")
COLUMNS = {"categorical": ("share", "log_count", "seen"),
           "numeric": ("gap_max", "gap_mean", "after_max", "spread"),
           POPULARITY: ("log_popularity",)}


@dataclass(frozen=True)
class AttributeSpec:
    """One item attribute the side features read.

    Args:
        name (str): the item feature.
        kind (str): ``categorical`` or ``numeric``.
        width (int): values per item (the feature's ``max_length``; numeric: 1).
        vocab_size (int): V, value ids lie in ``[0, V)`` (categorical; 0: unknown, then the
            counts compare every (history item, candidate) pair instead of indexing by value).
    """

    name: str
    kind: str
    width: int
    vocab_size: int = 0


def is_numeric(feature: Feature) -> bool:
    """Whether every vocabulary value of ``feature`` is a number (then it is a numeric attribute)."""
    try:
        values = [float(v) for v in feature.vocab]
    except ValueError:
        return False
    return bool(np.isfinite(values).all())


def side_feature_specs(schema: Schema, names: Sequence[str]) -> List[AttributeSpec]:
    """The attributes ``names`` (item attribute names, ``popularity``, or ``all``: every item
    attribute and popularity) as specs, in ``names`` order (``all``: schema order).

    Raises:
        ValueError: a name the schema's item attributes lack (naming them), or a duplicate.
    """
    names = list(names)
    attributes = [f for f in schema.item_features if f.name != ITEM_ID]
    if ALL in names:
        if names != [ALL]:
            raise ValueError(f"model.over_arch.side_features: {ALL!r} stands alone, got {names}")
        names = [f.name for f in attributes] + [POPULARITY]
    if len(set(names)) != len(names):
        raise ValueError(f"model.over_arch.side_features lists an attribute twice: {names}")
    by_name = {f.name: f for f in attributes}
    unknown = [n for n in names if n != POPULARITY and n not in by_name]
    if unknown:
        raise ValueError(f"model.over_arch.side_features: unknown item attribute(s) {unknown}; the data's item "
                         f"attributes are {list(by_name)} (or {POPULARITY!r}, or {ALL!r})")
    specs = []
    for n in names:
        if n == POPULARITY:
            specs.append(AttributeSpec(POPULARITY, POPULARITY, 0))
        elif is_numeric(by_name[n]):
            specs.append(AttributeSpec(n, "numeric", 1))
        else:
            specs.append(AttributeSpec(n, "categorical", by_name[n].max_length, len(by_name[n].vocab)))
    return specs


def num_side_features(specs: Sequence[AttributeSpec]) -> int:
    """F, the number of feature columns of ``specs``."""
    return sum(len(COLUMNS[s.kind]) for s in specs)


class SideFeatures(nn.Module):
    """(history, candidate) -> float32 side features [B, K, F] (see the module docstring).

    Args:
        specs (Sequence[AttributeSpec]): the attributes, in output column order
            (:func:`side_feature_specs`).
        num_items (int): N, the item id space (``schema.num_items``).

    Buffers:
        ``table_<j>`` per attribute j: int64 [N + 1, width] value ids (categorical, -1 = none) or
        float32 [N + 1] values (numeric, NaN = none; popularity: the standardised log count); row
        N is an unknown item. ``scale_<j>``: float32 [] the numeric attribute's scale s.

    Call Args:
        history (Tensor): int64 [B, L] history item ids (-1 padding; L may be 0).
        items (Tensor): int64 [B, K] candidate item ids (-1 padding).

    Returns:
        Tensor: float32 [B, K, F].

    Example::

        >>> specs = [AttributeSpec("genre", "categorical", 2), AttributeSpec("year", "numeric", 1)]
        >>> sf = SideFeatures(specs, num_items=3)
        >>> sf.set_tables({"genre": [[0, 1], [1, -1], [2, -1]], "year": [2000.0, 2010.0, 2020.0]})
        >>> [round(x, 3) for x in sf(torch.tensor([[0, 1, -1]]), torch.tensor([[1]]))[0, 0].tolist()]
        [1.0, 1.099, 1.0, 0.0, 0.612, 0.0, 0.612]
    """

    def __init__(self, specs: Sequence[AttributeSpec], num_items: int) -> None:
        super().__init__()
        self.specs = list(specs)
        if not self.specs:
            raise ValueError("SideFeatures needs at least one attribute")
        if num_items < 1:
            raise ValueError(f"SideFeatures.num_items must be >= 1, got {num_items}")
        for s in self.specs:
            if s.kind not in KINDS + (POPULARITY,):
                raise ValueError(f"SideFeatures: attribute {s.name!r} has unknown kind {s.kind!r}")
        self.num_items = int(num_items)
        self.num_features = num_side_features(self.specs)
        for j, s in enumerate(self.specs):
            if s.kind == "categorical":
                self.register_buffer(f"table_{j}", torch.full((num_items + 1, max(s.width, 1)), -1, dtype=torch.int64))
            else:
                self.register_buffer(f"table_{j}", torch.zeros(num_items + 1))
            self.register_buffer(f"scale_{j}", torch.ones(()))

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.specs]

    @torch.no_grad()
    def set_tables(self, values: Dict[str, object]) -> None:
        """Fills the tables: per attribute name, per item id [N] its value ids padded with -1
        (categorical, [N, width]), its number (numeric, [N], NaN = none) or its training
        interaction count (``popularity``, [N])."""
        n = self.num_items
        for j, s in enumerate(self.specs):
            if s.name not in values:
                raise ValueError(f"SideFeatures.set_tables: no values for attribute {s.name!r}")
            table = getattr(self, f"table_{j}")
            if s.kind == "categorical":
                a = np.asarray(values[s.name], dtype=np.int64).reshape(n, -1)
                if a.shape[1] > table.shape[1]:
                    raise ValueError(f"SideFeatures: attribute {s.name!r} has {a.shape[1]} values per item, at most "
                                     f"{table.shape[1]}")
                if s.vocab_size and a.size and int(a.max()) >= s.vocab_size:
                    raise ValueError(f"SideFeatures: attribute {s.name!r} has value id {int(a.max())}, its vocabulary "
                                     f"{s.vocab_size} values")
                table.fill_(-1)
                table[:n, :a.shape[1]] = torch.from_numpy(a)
                continue
            x = np.asarray(values[s.name], dtype=np.float64).reshape(n)
            if s.kind == POPULARITY:
                lp = np.log1p(x.clip(min=0))
                std = lp.std() if lp.std() > 0 else 1.0
                table.copy_(torch.from_numpy(((np.append(lp, 0.0) - lp.mean()) / std).astype(np.float32)))
            else:
                known = np.isfinite(x)
                std = x[known].std() if known.sum() > 1 and x[known].std() > 0 else 1.0
                table.copy_(torch.from_numpy(np.append(x, np.nan).astype(np.float32)))
                getattr(self, f"scale_{j}").fill_(float(std))

    def set_items_from(self, schema: Schema, item_columns: Dict[str, JaggedColumn], counts: np.ndarray) -> None:
        """:meth:`set_tables` from the data's item feature columns (name -> jagged value ids) and
        training interaction counts [N]; numeric attributes take their vocabulary's numbers."""
        n = self.num_items
        values: Dict[str, object] = {}
        for s in self.specs:
            if s.kind == POPULARITY:
                values[s.name] = np.asarray(counts)
                continue
            if s.name not in item_columns:
                raise ValueError(f"model.over_arch.side_features: the data has no item column {s.name!r}")
            col = item_columns[s.name]
            if col.num_rows != n:
                raise ValueError(f"item column {s.name!r} has {col.num_rows} rows, the side features {n}")
            lengths = col.lengths
            if s.kind == "numeric":
                numbers = np.array([float(v) for v in schema.item_feature(s.name).vocab], dtype=np.float64)
                sums = np.bincount(np.repeat(np.arange(n), lengths), weights=numbers[col.values], minlength=n)
                values[s.name] = np.where(lengths > 0, sums / np.maximum(lengths, 1), np.nan)
            else:
                width = max(int(lengths.max()) if lengths.size else 1, 1)
                a = np.full((n, width), -1, dtype=np.int64)
                rows = np.repeat(np.arange(n), lengths)
                a[rows, np.arange(col.values.size) - np.repeat(col.offsets[:-1], lengths)] = col.values
                values[s.name] = a
        self.set_tables(values)

    def forward(self, history: Tensor, items: Tensor) -> Tensor:
        if history.dim() != 2 or items.dim() != 2 or history.shape[0] != items.shape[0]:
            raise ValueError(f"SideFeatures expects history [B, L] and items [B, K], got {list(history.shape)} "
                             f"and {list(items.shape)}")
        n = self.num_items
        b, k = items.shape
        known_h = (history >= 0) & (history < n)  # [B, L]
        hrow = torch.where(known_h, history, torch.full_like(history, n))
        known_c = (items >= 0) & (items < n)
        crow = torch.where(known_c, items, torch.full_like(items, n))
        hw = known_h.float()
        denom = hw.sum(1, keepdim=True).clamp_min(1.0)  # [B, 1]
        cols: List[Tensor] = []
        for j, s in enumerate(self.specs):
            table = getattr(self, f"table_{j}")
            if s.kind == "categorical":
                a_h, a_c = table[hrow], table[crow]  # [B, L, W], [B, K, W]
                if s.vocab_size:
                    m = holding_counts(a_h, a_c, known_h, s.vocab_size)
                else:
                    m = holding_counts_pairwise(a_h, a_c, known_h)
                cols += [m / denom, torch.log1p(m), (m > 0).float()]
            elif s.kind == "numeric":
                scale = getattr(self, f"scale_{j}")
                xh = table[hrow]  # [B, L] (NaN: no value)
                ok_h = known_h & ~torch.isnan(xh)
                has = ok_h.any(1, keepdim=True)  # [B, 1]
                xz = torch.where(ok_h, xh, torch.zeros_like(xh))
                x_max = torch.where(ok_h, xh, torch.full_like(xh, float("-inf"))).amax(1, keepdim=True) if xh.shape[1] else xz.sum(1, keepdim=True)
                x_max = torch.where(has, x_max, torch.zeros_like(x_max))
                x_mean = xz.sum(1, keepdim=True) / ok_h.float().sum(1, keepdim=True).clamp_min(1.0)
                x = table[crow]  # [B, K]
                ok = known_c & ~torch.isnan(x) & has
                x = torch.where(ok, x, torch.zeros_like(x))
                okf = ok.float()
                cols += [(x - x_max) / scale * okf, (x - x_mean) / scale * okf, (x > x_max).float() * okf,
                         ((x_max - x_mean) / scale).expand(b, k)]
            else:
                cols.append(table[crow])
        return torch.stack(cols, dim=-1)


def holding_counts_pairwise(a_h: Tensor, a_c: Tensor, known_h: Tensor) -> Tensor:
    """float32 [B, K]: how many known history items hold any of each candidate's values, by
    comparing every (history item, candidate) pair of values (O(B K L W^2); the reference of
    :func:`holding_counts`).

    Args:
        a_h (Tensor): int64 [B, L, W] the history items' value ids (-1: none).
        a_c (Tensor): int64 [B, K, W] the candidates' value ids (-1: none).
        known_h (Tensor): bool [B, L] history slots holding a known item.
    """
    same = (a_c.unsqueeze(2).unsqueeze(-1) == a_h.unsqueeze(1).unsqueeze(3)) & (a_c >= 0).unsqueeze(2).unsqueeze(-1)
    holds = same.flatten(3).any(-1) & known_h.unsqueeze(1)  # [B, K, L]
    return holds.float().sum(2)


def holding_counts(a_h: Tensor, a_c: Tensor, known_h: Tensor, vocab_size: int) -> Tensor:
    """float32 [B, K]: how many known history items hold any of each candidate's values
    (:func:`holding_counts_pairwise`'s result in O(B (L W + V + K W) L / 32)).

    Each user gets a table [V + 1, ceil(L / 32)] of history-position bitsets, value v's row
    holding bit l when history item l has v (32 positions per int64 word, so the shifts and the
    popcount below never touch the sign bit); a candidate's count is the popcount of the OR of its
    values' rows. A value listed twice by one item is counted once (its repeats are dropped
    before the scatter, whose add is an OR only over distinct bits).

    Args:
        a_h (Tensor): int64 [B, L, W] the history items' value ids in ``[0, V)`` (-1: none).
        a_c (Tensor): int64 [B, K, W2] the candidates' value ids in ``[0, V)`` (-1: none).
        known_h (Tensor): bool [B, L] history slots holding a known item.
        vocab_size (int): V.
    """
    b, l, w = a_h.shape
    k, w2 = a_c.shape[1], a_c.shape[2]
    if l == 0:
        return torch.zeros(b, k, device=a_c.device)
    words = (l + 31) // 32
    pos = torch.arange(l, device=a_h.device)
    bit = torch.bitwise_left_shift(torch.ones_like(pos), pos % 32)  # [L]
    earlier = torch.ones(w, w, dtype=torch.bool, device=a_h.device).tril(-1)  # [w, w'] w' < w
    repeat = ((a_h.unsqueeze(-1) == a_h.unsqueeze(-2)) & earlier).any(-1)  # [B, L, W]
    ok = (a_h >= 0) & known_h.unsqueeze(-1) & ~repeat
    slot = torch.where(ok, a_h, vocab_size) * words + (pos // 32).view(1, l, 1)  # [B, L, W]
    src = torch.where(ok, bit.view(1, l, 1), 0)
    table = torch.zeros(b, (vocab_size + 1) * words, dtype=torch.int64, device=a_h.device)
    table = table.scatter_add(1, slot.reshape(b, l * w), src.reshape(b, l * w))  # row V stays 0
    cand = torch.where(a_c >= 0, a_c, vocab_size) * words  # [B, K, W2]
    offsets = torch.arange(words, device=a_h.device)
    rows = torch.gather(table, 1, (cand.unsqueeze(-1) + offsets).reshape(b, k * w2 * words)).view(b, k, w2, words)
    union = rows[:, :, 0]
    for j in range(1, w2):
        union = union | rows[:, :, j]  # [B, K, words]
    return _popcount32(union).sum(-1).float()


def _popcount32(x: Tensor) -> Tensor:
    """The number of set bits of each int64 element holding a value in [0, 2^32) (SWAR)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101 & 0xFFFFFFFF) >> 24
