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
    def __init__(self, feature_keys: Sequence[str], in_features: int, layer_sizes: Sequence[int], num_heads: int = 1) -> None:
        super().__init__()
        if not feature_keys:
            raise ValueError(f"{type(self).__name__}.feature_keys is empty")
        if not layer_sizes:
            raise ValueError(f"{type(self).__name__}.layer_sizes is empty")
        if num_heads < 1:
            raise ValueError(f"{type(self).__name__}.num_heads must be >= 1, got {num_heads}")
        self.num_heads = num_heads
        self.feature_keys: List[str] = list(feature_keys)
        # shared hidden layers with ReLU, then one linear head per task (stacked in one Linear)
        self.mlp = MLP(in_features, list(layer_sizes[:-1]), bias=True) if len(layer_sizes) > 1 else nn.Identity()
        self.dim = layer_sizes[-1]
        self.out = nn.Linear(layer_sizes[-2] if len(layer_sizes) > 1 else in_features, self.dim * num_heads)

    @property
    def out_features(self) -> int:
        return self.dim

    def heads(self, pooled: KeyedTensor) -> Tensor:
        """[B, H, D] L2-normalised embeddings, one per head."""
        x = torch.cat([pooled[k] for k in self.feature_keys], dim=1)
        y = self.out(self.mlp(x))
        return nn.functional.normalize(y.unflatten(-1, (self.num_heads, self.dim)), dim=-1)


class UserTower(_Tower):
    """User tower: user features + pooled history -> shared MLP -> one head per task.

    The hidden layers are shared by all tasks; each task has its own linear head, so a user
    has one L2-normalised embedding per task (``u [B, T, D]``) while items have one.

    Args:
        feature_keys (Sequence[str]): KJT keys read from the pooled embeddings
            (``schema.user_keys``: static features, then ``user__history``).
        in_features (int): sum of those keys' embedding dims.
        layer_sizes (Sequence[int]): hidden sizes followed by the output dimension D.
        num_heads (int): T, one head per task (``schema.tasks`` order).

    Call Args:
        pooled (KeyedTensor): pooled embeddings with (at least) these keys, [B, *].

    Returns:
        Tensor: [B, T, D] L2-normalised embeddings.

    Example::

        >>> tower = UserTower(["user__country"], in_features=4, layer_sizes=[16, 8], num_heads=3)
        >>> kt = KeyedTensor.from_tensor_list(["user__country"], [torch.randn(2, 4)])
        >>> tower(kt).shape
        torch.Size([2, 3, 8])
    """

    def forward(self, pooled: KeyedTensor) -> Tensor:
        return self.heads(pooled)


class ItemTower(_Tower):
    """Item tower: item id + attributes -> MLP -> L2-normalised [B, D] (shared by all tasks).

    Args:
        feature_keys (Sequence[str]): KJT keys read from the pooled embeddings (``schema.item_keys``).
        in_features (int): sum of those keys' embedding dims.
        layer_sizes (Sequence[int]): hidden sizes followed by the output dimension D.

    Call Args:
        pooled (KeyedTensor): pooled embeddings with (at least) these keys, [B, *].

    Returns:
        Tensor: [B, D] L2-normalised embeddings.

    Example::

        >>> tower = ItemTower(["item__item_id"], in_features=4, layer_sizes=[8])
        >>> kt = KeyedTensor.from_tensor_list(["item__item_id"], [torch.randn(3, 4)])
        >>> tower(kt).shape
        torch.Size([3, 8])
    """

    def forward(self, pooled: KeyedTensor) -> Tensor:
        return self.heads(pooled)[:, 0]
