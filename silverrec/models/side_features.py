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
    """

    name: str
    kind: str
    width: int


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
            specs.append(AttributeSpec(n, "categorical", by_name[n].max_length))
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
                # history item l holds one of candidate k's values: any over (candidate value, item value)
                same = (a_c.unsqueeze(2).unsqueeze(-1) == a_h.unsqueeze(1).unsqueeze(3)) & (a_c >= 0).unsqueeze(2).unsqueeze(-1)
                holds = same.flatten(3).any(-1).float() * hw.unsqueeze(1)  # [B, K, L]
                m = holds.sum(2)  # [B, K]
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
