"""Encoding requests with external values into the serving module's (values, lengths) tensors."""
from typing import Mapping, Sequence, Tuple

import torch
from torch import Tensor

from silverrec.schema import HISTORY, Schema


def encode_users(schema: Schema, users: Sequence[Mapping[str, object]]) -> Tuple[Tensor, Tensor]:
    """Maps users given by external values to ``(values [L], lengths [B, F])``.

    Each user is ``{feature: value or [values], "history": [external item ids]}``. A missing
    feature is an empty row (pooled to zeros, as a user without history); a history longer than
    ``schema.history_length`` keeps its most recent (last) items.

    Raises:
        ValueError: an unknown feature name or a value outside a feature's vocabulary (the
            message names the user index, the feature and the value).

    Example::

        >>> from silverrec.schema import Feature, Schema
        >>> schema = Schema((Feature("country", ("us", "de")),), (Feature("item_id", ("a", "b")),))
        >>> values, lengths = encode_users(schema, [{"country": "de", "history": ["b", "a"]}])
        >>> values.tolist(), lengths.tolist()
        ([1, 1, 0], [[1, 2]])
    """
    if len(users) == 0:
        raise ValueError("encode_users: no users given")
    known = {f.name for f in schema.user_features} | {HISTORY}
    columns = [[] for _ in range(len(schema.user_features) + 1)]  # [F][B] id lists
    for b, user in enumerate(users):
        unknown = set(user) - known
        if unknown:
            raise ValueError(f"user {b}: unknown feature(s) {sorted(unknown)}; known: {sorted(known)}")
        for c, f in enumerate(schema.user_features):
            columns[c].append(_ids(f, user.get(f.name), b))
        history = _ids(schema.item_features[0], user.get(HISTORY), b, what=HISTORY)
        columns[-1].append(history[-schema.history_length :] if history else history)
    lengths = torch.tensor([[len(columns[c][b]) for c in range(len(columns))] for b in range(len(users))], dtype=torch.int64)
    values = torch.tensor([v for col in columns for row in col for v in row], dtype=torch.int64)
    return values, lengths


def _ids(feature, raw: object, b: int, what: str = "") -> list:
    if raw is None:
        return []
    items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    out = []
    for v in items:
        if not feature.has(v):
            raise ValueError(f"user {b}: feature {what or feature.name!r} has no value {v!r} in its vocabulary")
        out.append(feature.id_of(v))
    return out
