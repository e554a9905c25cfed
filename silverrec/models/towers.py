"""The dense parts of the two towers: pooled embeddings -> MLP -> L2-normalised embedding.

Both towers read their features' pooled embeddings from one TorchRec ``KeyedTensor`` (the
output of the shared ``EmbeddingBagCollection``, see ``two_tower.py``), so the user history
is pooled from the very ``item_id`` table the item tower uses.
"""
from typing import List, Sequence

import torch
from torch import Tensor, nn
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedTensor


class _Tower(nn.Module):
    def __init__(self, feature_keys: Sequence[str], in_features: int, layer_sizes: Sequence[int]) -> None:
        super().__init__()
        if not feature_keys:
            raise ValueError(f"{type(self).__name__}.feature_keys is empty")
        if not layer_sizes:
            raise ValueError(f"{type(self).__name__}.layer_sizes is empty")
        self.feature_keys: List[str] = list(feature_keys)
        # hidden layers with ReLU, then a linear projection to the output dimension
        self.mlp = MLP(in_features, list(layer_sizes[:-1]), bias=True) if len(layer_sizes) > 1 else nn.Identity()
        self.out = nn.Linear(layer_sizes[-2] if len(layer_sizes) > 1 else in_features, layer_sizes[-1])

    @property
    def out_features(self) -> int:
        return self.out.out_features

    def forward(self, pooled: KeyedTensor) -> Tensor:
        """
        Args:
            pooled (KeyedTensor): pooled embeddings with (at least) this tower's keys, [B, *].

        Returns:
            Tensor: [B, D] L2-normalised embeddings.
        """
        x = torch.cat([pooled[k] for k in self.feature_keys], dim=1)
        return nn.functional.normalize(self.out(self.mlp(x)), dim=-1)


class UserTower(_Tower):
    """User tower: user features + pooled history -> MLP -> L2-normalised [B, D].

    Args:
        feature_keys (Sequence[str]): KJT keys read from the pooled embeddings
            (``schema.user_keys``: static features, then ``user__history``).
        in_features (int): sum of those keys' embedding dims.
        layer_sizes (Sequence[int]): hidden sizes followed by the output dimension D.

    Example::

        >>> tower = UserTower(["user__country"], in_features=4, layer_sizes=[16, 8])
        >>> kt = KeyedTensor.from_tensor_list(["user__country"], [torch.randn(3, 4)])
        >>> tower(kt).shape
        torch.Size([3, 8])
    """


class ItemTower(_Tower):
    """Item tower: item id + attributes -> MLP -> L2-normalised [B, D].

    Args:
        feature_keys (Sequence[str]): KJT keys read from the pooled embeddings (``schema.item_keys``).
        in_features (int): sum of those keys' embedding dims.
        layer_sizes (Sequence[int]): hidden sizes followed by the output dimension D.

    Example::

        >>> tower = ItemTower(["item__item_id"], in_features=4, layer_sizes=[8])
        >>> kt = KeyedTensor.from_tensor_list(["item__item_id"], [torch.randn(3, 4)])
        >>> tower(kt).shape
        torch.Size([3, 8])
    """
