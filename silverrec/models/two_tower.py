"""The two-tower model: one TorchRec ``EmbeddingBagCollection`` shared by both towers.

Layout (B pairs, F_u user keys, F_i item keys, E embedding dim, D output dim)::

    KJT [keys: user__* (+ user__history), item__*; stride B]
        └─ EmbeddingBagCollection ─► KeyedTensor [B, (F_u + F_i) * E]
              ├─ UserTower (user__* keys) ─► u [B, D]
              └─ ItemTower (item__* keys) ─► v [B, D]

The ``item__item_id`` table serves two features: the item's own id and the user history
(``user__history``, mean-pooled), so the history is pooled from the item-id table.
"""
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.similarity import Similarity
from silverrec.models.towers import ItemTower, UserTower
from silverrec.schema import HISTORY, ITEM_ID, Schema, item_key, user_key


class TwoTower(nn.Module):
    """User and item towers over one shared ``EmbeddingBagCollection``.

    Args:
        embedding_bag_collection (EmbeddingBagCollection): all tables of both sides.
        user_tower (UserTower): dense user tower.
        item_tower (ItemTower): dense item tower.
        similarity (Similarity): the similarity used by loss, evaluation and serving.

    Call Args:
        features (KeyedJaggedTensor): both sides' keys, stride B (a side may have empty rows).

    Returns:
        Tuple[Tensor, Tensor]: u [B, D], v [B, D], L2-normalised.

    Example::

        >>> from silverrec.schema import Feature, Schema
        >>> schema = Schema((Feature("country", ("a", "b")),), (Feature("item_id", ("x", "y", "z")),))
        >>> model = build_two_tower(schema, TwoTowerConfig(embedding_dim=4, user_layers=[8], item_layers=[8]))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=list(schema.user_keys + schema.item_keys),
        ...     values=torch.tensor([1, 2]), lengths=torch.tensor([1, 0, 1]))
        >>> [t.shape for t in model(kjt)]
        [torch.Size([1, 8]), torch.Size([1, 8])]
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        user_tower: UserTower,
        item_tower: ItemTower,
        similarity: Similarity,
    ) -> None:
        super().__init__()
        if user_tower.out_features != item_tower.out_features:
            raise ValueError(
                f"user tower outputs {user_tower.out_features} dims, item tower {item_tower.out_features}"
            )
        self.ebc = embedding_bag_collection
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.similarity = similarity

    def forward(self, features: KeyedJaggedTensor) -> Tuple[Tensor, Tensor]:
        pooled = self.ebc(features)
        return self.user_tower(pooled), self.item_tower(pooled)


@dataclass
class TwoTowerConfig:
    """Sizes of the two-tower model (YAML keys under ``model:``).

    Args:
        embedding_dim (int): E, the dimension of every embedding table.
        user_layers (List[int]): user tower hidden sizes, then the output dimension D.
        item_layers (List[int]): item tower hidden sizes, then D (must end with the same D).
        temperature (float): initial softmax temperature of the similarity.
        learn_temperature (bool): learn the temperature.
    """

    embedding_dim: int = 64
    user_layers: List[int] = field(default_factory=lambda: [256, 64])
    item_layers: List[int] = field(default_factory=lambda: [256, 64])
    temperature: float = 0.05
    learn_temperature: bool = True


def embedding_tables(schema: Schema, embedding_dim: int) -> List[EmbeddingBagConfig]:
    """One table per feature; ``item__item_id`` also serves ``user__history`` (mean-pooled)."""
    tables = [
        EmbeddingBagConfig(
            name=user_key(f.name),
            embedding_dim=embedding_dim,
            num_embeddings=f.num_embeddings,
            feature_names=[user_key(f.name)],
            pooling=PoolingType.SUM if f.max_length == 1 else PoolingType.MEAN,
        )
        for f in schema.user_features
    ]
    for f in schema.item_features:
        names = [item_key(f.name)] + ([user_key(HISTORY)] if f.name == ITEM_ID else [])
        tables.append(
            EmbeddingBagConfig(
                name=item_key(f.name),
                embedding_dim=embedding_dim,
                num_embeddings=f.num_embeddings,
                feature_names=names,
                pooling=PoolingType.MEAN,
            )
        )
    return tables


def build_two_tower(schema: Schema, config: TwoTowerConfig, device: torch.device = torch.device("cpu")) -> TwoTower:
    """Builds a :class:`TwoTower` sized by ``schema`` and ``config``.

    With ``device=torch.device("meta")`` the embedding tables are not allocated (for
    DistributedModelParallel, which materialises the shards itself).
    """
    if config.user_layers[-1] != config.item_layers[-1]:
        raise ValueError(
            f"model.user_layers ends with {config.user_layers[-1]}, model.item_layers with "
            f"{config.item_layers[-1]}: both towers must output the same dimension"
        )
    e = config.embedding_dim
    ebc = EmbeddingBagCollection(tables=embedding_tables(schema, e), device=device)
    user_keys, item_keys = schema.user_keys, schema.item_keys
    return TwoTower(
        ebc,
        UserTower(user_keys, in_features=e * len(user_keys), layer_sizes=config.user_layers),
        ItemTower(item_keys, in_features=e * len(item_keys), layer_sizes=config.item_layers),
        Similarity(config.temperature, config.learn_temperature),
    )
