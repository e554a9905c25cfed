"""The serving side of the user tower: dense request tensors -> user embedding.

Training uses one EmbeddingBagCollection for both towers; serving needs only the user side, so
:func:`user_encoder_from_two_tower` builds a user-only ``EmbeddingBagCollection`` (the user
tables plus the ``item__item_id`` table, read by ``user__history``) and copies the trained
weights into it: a tested train -> serve converter, as in TorchRec's retrieval example.
"""
import copy
from typing import List

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.towers import UserTower
from silverrec.models.two_tower import TwoTower
from silverrec.schema import HISTORY, Schema, user_key


class UserEncoder(nn.Module):
    """User features as (values, lengths) -> L2-normalised user embeddings.

    Args:
        embedding_bag_collection (EmbeddingBagCollection): user-side tables (features ``keys``).
        user_tower (UserTower): the trained dense user tower.
        keys (List[str]): KJT keys in input column order (``schema.user_keys``).

    Call Args:
        values (Tensor): int64 [L] feature ids, grouped by feature (column) then by user:
            all of feature 0's ids for users 0..B-1, then feature 1's, ...
        lengths (Tensor): int64 [B, F] number of ids of each user in each feature column.

    Returns:
        Tensor: float32 [B, D].
    """

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection, user_tower: UserTower, keys: List[str]) -> None:
        super().__init__()
        self.ebc = embedding_bag_collection
        self.user_tower = user_tower
        self.keys = list(keys)

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        kjt = KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths.t().reshape(-1))
        return self.user_tower(self.ebc(kjt))


def user_encoder_from_two_tower(model: TwoTower, schema: Schema) -> UserEncoder:
    """Builds a :class:`UserEncoder` holding copies of ``model``'s user-side weights."""
    history = user_key(HISTORY)
    tables: List[EmbeddingBagConfig] = []
    sources = {}
    for cfg in model.ebc.embedding_bag_configs():
        feats = [f for f in cfg.feature_names if f in schema.user_keys]
        if not feats:
            continue
        tables.append(
            EmbeddingBagConfig(
                name=cfg.name,
                embedding_dim=cfg.embedding_dim,
                num_embeddings=cfg.num_embeddings,
                feature_names=feats,
                pooling=cfg.pooling,
            )
        )
        sources[cfg.name] = model.ebc.embedding_bags[cfg.name].weight
    if history not in {f for t in tables for f in t.feature_names}:
        raise ValueError(f"the model has no table serving {history!r}")
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    with torch.no_grad():
        for name, weight in sources.items():
            ebc.embedding_bags[name].weight.copy_(weight.detach().cpu())
    return UserEncoder(ebc, copy.deepcopy(model.user_tower), list(schema.user_keys))
