"""Side features of (user, candidate) pairs from the user's history and the item attribute table.

The OverArch over ``[u, v, u*v]`` sees the towers' embeddings only, and on the default synthetic
world it gains nothing over the dot product, although that world has effects an inner product
cannot express (per-user category thresholds, a non-linear preference over the release year,
creator loyalty, no releases after the user's period began; ``benchmarks/overarch_side_features.py``).
These features state such effects directly. For a user with history H (the history item ids the
towers and the serving graph receive, -1 padding) and a candidate i:

=====================  ====================================================================  =======
group                  features                                                              item feature
=====================  ====================================================================  =======
``category_affinity``  share of H in category(i); [no item of H in category(i)]              category
``creator_seen``       log(1 + #items of H by creator(i)); [creator(i) in H]                  creator
``year_gap``           (year(i) - max year(H)) / 10; (year(i) - mean year(H)) / 10;           year
                       [year(i) > max year(H)]; (max - mean year(H)) / 10
``language_affinity``  share of H in language(i)                                             language
``popularity``         log(1 + training interactions of i), standardised over the items      --
=====================  ====================================================================  =======

Shares and counts are over the known history items (ids in ``[0, N)``); an empty history gives
shares 0 and year gaps 0. A candidate id outside ``[0, N)`` (an item added after publish, which the
table does not know) matches no history item and gets year features 0 and the popularity of an
item without interactions; an item updated after publish keeps its published attributes here
until the next publish. Years are the numeric values of the ``year`` vocabulary (its ids when
a value is not a number).

The table is a buffer filled from the data by :meth:`SideFeatures.set_items` (the trainer does
it), so a checkpoint and the exported serving graph carry it.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from silverrec.schema import Schema

# group -> (item feature it reads (None: none), feature columns)
GROUPS: Dict[str, tuple] = {
    "category_affinity": ("category", ("category_share", "category_unseen")),
    "creator_seen": ("creator", ("creator_log_count", "creator_seen")),
    "year_gap": ("year", ("year_gap_max", "year_gap_mean", "year_after_max", "year_spread")),
    "language_affinity": ("language", ("language_share",)),
    "popularity": (None, ("log_popularity",)),
}
_ATTRIBUTE_GROUPS = ("category_affinity", "creator_seen", "language_affinity")


def check_groups(groups: Sequence[str]) -> List[str]:
    """The groups as a list, after checking names and duplicates (``model.over_arch.side_features``)."""
    groups = list(groups)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"model.over_arch.side_features: unknown group(s) {unknown}; choose from {list(GROUPS)}")
    if len(set(groups)) != len(groups):
        raise ValueError(f"model.over_arch.side_features lists a group twice: {groups}")
    return groups


def num_side_features(groups: Sequence[str]) -> int:
    """F, the number of feature columns of ``groups``."""
    return sum(len(GROUPS[g][1]) for g in groups)


class SideFeatures(nn.Module):
    """(history, candidate) -> float32 side features [B, K, F] (see the module docstring).

    Args:
        groups (Sequence[str]): feature groups, in output column order.
        num_items (int): N, the item id space (``schema.num_items``).

    Buffers:
        attributes (Tensor): int64 [N + 1, 3] category, creator and language id of each item (row
            N: an unknown item, -1). year (Tensor): float32 [N + 1] release year (row N: 0).
        log_popularity (Tensor): float32 [N + 1] standardised log(1 + training interactions).

    Call Args:
        history (Tensor): int64 [B, L] history item ids (-1 padding; L may be 0).
        items (Tensor): int64 [B, K] candidate item ids (-1 padding).

    Returns:
        Tensor: float32 [B, K, F].

    Example::

        >>> sf = SideFeatures(["category_affinity", "year_gap"], num_items=3)
        >>> sf.set_items(category=np.array([0, 1, 1]), creator=np.zeros(3, int), language=np.zeros(3, int),
        ...              year=np.array([2000.0, 2010.0, 2020.0]), counts=np.array([5, 0, 1]))
        >>> sf(torch.tensor([[0, 1, -1]]), torch.tensor([[2, 0]]))[0].tolist()
        [[0.5, 0.0, 1.0, 1.5, 1.0, 0.5], [0.5, 0.0, -1.0, -0.5, 0.0, 0.5]]
    """

    def __init__(self, groups: Sequence[str], num_items: int) -> None:
        super().__init__()
        self.groups = check_groups(groups)
        if not self.groups:
            raise ValueError("SideFeatures needs at least one group")
        if num_items < 1:
            raise ValueError(f"SideFeatures.num_items must be >= 1, got {num_items}")
        self.num_items = int(num_items)
        self.num_features = num_side_features(self.groups)
        self.register_buffer("attributes", torch.full((num_items + 1, 3), -1, dtype=torch.int64))
        self.register_buffer("year", torch.zeros(num_items + 1))
        self.register_buffer("log_popularity", torch.zeros(num_items + 1))

    @staticmethod
    def item_features(groups: Sequence[str]) -> List[str]:
        """The item features ``groups`` read (each must be single-valued)."""
        return [GROUPS[g][0] for g in groups if GROUPS[g][0] is not None]

    @torch.no_grad()
    def set_items(self, category: np.ndarray, creator: np.ndarray, language: np.ndarray, year: np.ndarray,
                  counts: np.ndarray) -> None:
        """Fills the table: per item id [N] its category, creator and language ids, its release year
        (float) and its number of training interactions (for groups that do not read an
        attribute, pass any array of N values, e.g. zeros)."""
        n = self.num_items
        cols = {"category": category, "creator": creator, "language": language, "year": year, "counts": counts}
        for name, a in cols.items():
            if np.shape(a) != (n,):
                raise ValueError(f"SideFeatures.set_items: {name} must have shape ({n},), got {np.shape(a)}")
        attrs = np.stack([np.asarray(category), np.asarray(creator), np.asarray(language)], axis=1).astype(np.int64)
        self.attributes[:n] = torch.from_numpy(attrs).to(self.attributes.device)
        self.year[:n] = torch.from_numpy(np.asarray(year, dtype=np.float32)).to(self.year.device)
        lp = np.log1p(np.asarray(counts, dtype=np.float64).clip(min=0))
        std = lp.std() if lp.std() > 0 else 1.0
        z = (np.append(lp, 0.0) - lp.mean()) / std  # row N: an item without interactions
        self.log_popularity.copy_(torch.from_numpy(z.astype(np.float32)))

    def set_items_from(self, schema: Schema, item_columns: Dict[str, np.ndarray], counts: np.ndarray) -> None:
        """:meth:`set_items` from single-valued item feature columns (name -> int64 [N] ids); the
        year vocabulary's values become numbers. Errors name a feature the groups need and the
        schema lacks."""
        n = self.num_items
        needed = self.item_features(self.groups)
        names = [f.name for f in schema.item_features]
        missing = [f for f in needed if f not in names or f not in item_columns]
        if missing:
            raise ValueError(f"model.over_arch.side_features {self.groups} need the single-valued item feature(s) "
                             f"{missing}; the data's item features are {names}")
        zeros = np.zeros(n, dtype=np.int64)
        year = np.zeros(n, dtype=np.float32)
        if "year" in needed:
            vocab = schema.item_feature("year").vocab
            try:
                values = np.array([float(v) for v in vocab], dtype=np.float32)
            except ValueError:
                values = np.arange(len(vocab), dtype=np.float32)
            year = values[item_columns["year"]]
        self.set_items(*(item_columns[a] if a in needed else zeros for a in ("category", "creator", "language")),
                       year=year, counts=counts)

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
        count = hw.sum(1, keepdim=True)  # [B, 1]
        denom = count.clamp_min(1.0)
        cols: List[Tensor] = []
        attr_h, attr_c = self.attributes[hrow], self.attributes[crow]  # [B, L, 3], [B, K, 3]

        def matches(a: int) -> Tensor:  # [B, K]: known history items sharing the candidate's attribute a
            same = attr_c[:, :, a].unsqueeze(2) == attr_h[:, :, a].unsqueeze(1)  # [B, K, L]
            return (same.float() * hw.unsqueeze(1)).sum(2) * known_c.float()

        for g in self.groups:
            if g == "category_affinity":
                m = matches(0)
                cols += [m / denom, (m == 0).float()]
            elif g == "creator_seen":
                m = matches(1)
                cols += [torch.log1p(m), (m > 0).float()]
            elif g == "language_affinity":
                cols.append(matches(2) / denom)
            elif g == "year_gap":
                yh = self.year[hrow]  # [B, L]
                has = count > 0
                y_max = torch.where(known_h, yh, torch.full_like(yh, float("-inf"))).amax(1, keepdim=True) if yh.shape[1] else count
                y_max = torch.where(has, y_max, torch.zeros_like(y_max))
                y_mean = (yh * hw).sum(1, keepdim=True) / denom
                y = self.year[crow]  # [B, K]
                ok = (known_c & has).float()
                cols += [(y - y_max) / 10 * ok, (y - y_mean) / 10 * ok, (y > y_max).float() * ok,
                         ((y_max - y_mean) / 10).expand(b, k)]
            else:  # popularity
                cols.append(self.log_popularity[crow])
        return torch.stack(cols, dim=-1)
