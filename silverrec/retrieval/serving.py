"""The first serving module: user tower + exact top-K over the published item embeddings.

One graph, fixed output shapes (B, K), exportable with ``torch.export`` and a dynamic batch.
Later layers (Bloom filter, IVF-INT8 index, OverArch, Value Model) slot in between the user
encoder and the top-K.
"""
from typing import Tuple

from torch import Tensor, nn

from silverrec.models.user_encoder import UserEncoder
from silverrec.retrieval.exact import ExactSearch


class ExactRetrievalModule(nn.Module):
    """Request tensors -> top-K item rows and scores.

    Args:
        user_encoder (UserEncoder): the trained user side.
        search (ExactSearch): exact top-K over the item-embedding buffer (item rows = ids).

    Call Args:
        values (Tensor): int64 [L] user feature ids (see :class:`UserEncoder`).
        lengths (Tensor): int64 [B, F] ids per user and feature column.

    Returns:
        Tuple[Tensor, Tensor]: ids int64 [B, K] (item rows, best first) and scores float32 [B, K].

    Example::

        >>> import torch
        >>> from silverrec.schema import Feature, Schema
        >>> from silverrec.models.two_tower import TwoTowerConfig, build_two_tower
        >>> from silverrec.models.user_encoder import user_encoder_from_two_tower
        >>> schema = Schema((Feature("country", ("a", "b")),), (Feature("item_id", ("x", "y", "z")),))
        >>> tt = build_two_tower(schema, TwoTowerConfig(embedding_dim=4, user_layers=[8], item_layers=[8]))
        >>> module = ExactRetrievalModule(user_encoder_from_two_tower(tt, schema), ExactSearch(torch.randn(3, 8), k=2))
        >>> ids, scores = module(torch.tensor([1, 0, 2]), torch.tensor([[1, 2]]))
        >>> ids.shape, scores.shape
        (torch.Size([1, 2]), torch.Size([1, 2]))
    """

    def __init__(self, user_encoder: UserEncoder, search: ExactSearch) -> None:
        super().__init__()
        self.user_encoder = user_encoder
        self.search = search

    def forward(self, values: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        u = self.user_encoder(values, lengths)
        scores, ids = self.search(u)
        return ids, scores
