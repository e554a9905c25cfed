"""The sequence user tower: causal self-attention over the user's history (SASRec-style).

The history is a right-aligned sequence of item embeddings ``x [B, L, E]`` (the latest item at
position ``L - 1``, padding on the left, ``valid [B, L]``), L <= H (the history length the tower
was built for). Learned positions count from the end, so the latest item always has position
``H - 1`` whatever L is. A few pre-LayerNorm blocks of causal multi-head self-attention and a
feed-forward layer follow (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"); a
final LayerNorm, then one linear head per task, L2-normalised.

The state at position i has seen the items up to i, so during training the state at every
position predicts the next item (one sequence teaches up to L targets,
:mod:`silverrec.models.sequence_train_task`); at retrieval the user embedding is the state at the
last position. The forward has fixed shapes and no data-dependent control flow (it runs inside the
exported serving graph, :mod:`silverrec.models.padded_sequence_encoder`).
"""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from silverrec.models.dropout import Dropout, dropout


class CausalBlock(nn.Module):
    """One pre-LN transformer block: causal self-attention, then a feed-forward layer.

    Args:
        dim (int): E, the model width.
        num_heads (int): attention heads (E must be divisible by it).
        dropout (float): dropout on the attention weights and both residual branches.
        ffn_dim (int): hidden size of the feed-forward layer.

    Call Args:
        x (Tensor): [B, L, E]. mask (Tensor): bool [B, 1, L, L], True where a query may attend
            to a key.

    Returns:
        Tensor: [B, L, E].
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_dim: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"model.sequence.num_heads={num_heads} must divide the embedding dim {dim}")
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, e = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, e // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.training and self.dropout > 0:
            # SDPA's math path, with the attention weights' dropout mask from 16-bit words (bernoulli_ is slow on CPU)
            w = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5).masked_fill_(~mask, float("-inf")).softmax(-1)
            a = dropout(w, self.dropout, True) @ v  # [B, heads, L, E / heads]
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, e)))  # [B, L, E]
        return x + self.drop(self.ffn(self.norm2(x)))


class SequenceUserTower(nn.Module):
    """Causal transformer over a right-aligned history -> one L2-normalised embedding per task.

    Args:
        dim (int): E = D, the item embedding and output dimension.
        max_length (int): H, the most history positions (``schema.history_length``).
        num_blocks (int): transformer blocks.
        num_heads (int): attention heads per block.
        dropout (float): dropout of the inputs and of every block.
        num_tasks (int): T, one linear head per task (``schema.tasks`` order).

    Call Args:
        x (Tensor): float32 [B, L, E] right-aligned history item embeddings (L <= H).
        valid (Tensor): bool [B, L], True at real items (a suffix of each row).

    Returns:
        Tensor: [B, T, D] L2-normalised user embeddings from the last position (a user without
        history gets the heads of the padding state: a learned "no history" embedding).

    Example::

        >>> tower = SequenceUserTower(8, max_length=5, num_blocks=1, num_heads=2, dropout=0.0, num_tasks=2)
        >>> x, valid = torch.randn(3, 4, 8), torch.tensor([[False, True, True, True]] * 3)
        >>> tower(x, valid).shape
        torch.Size([3, 2, 8])
        >>> tower.states(x, valid).shape
        torch.Size([3, 4, 8])
    """

    def __init__(self, dim: int, max_length: int, num_blocks: int = 2, num_heads: int = 1, dropout: float = 0.2,
                 num_tasks: int = 1) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("max_length", max_length), ("num_blocks", num_blocks),
                            ("num_heads", num_heads), ("num_tasks", num_tasks)):
            if value < 1:
                raise ValueError(f"SequenceUserTower.{name} must be >= 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.sequence.dropout must be in [0, 1), got {dropout}")
        self.dim, self.max_length, self.num_heads = dim, max_length, num_tasks
        self.positions = nn.Parameter(torch.randn(max_length, dim) * dim ** -0.5)
        self.input_drop = Dropout(dropout)
        self.blocks = nn.ModuleList([CausalBlock(dim, num_heads, dropout, dim) for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim * num_tasks)

    @property
    def out_features(self) -> int:
        return self.dim

    def states(self, x: Tensor, valid: Tensor) -> Tensor:
        """The final states of every position: [B, L, E] (before the task heads)."""
        n = x.shape[1]
        torch._check(n <= self.max_length, lambda: f"history of {n} positions, the tower holds {self.max_length}")
        h = self.input_drop(x + self.positions[self.max_length - n:]) * valid.unsqueeze(-1)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        mask = ((causal & valid.unsqueeze(1)) | eye).unsqueeze(1)  # [B, 1, L, L]: a padding query sees itself
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)

    def heads(self, states: Tensor) -> Tensor:
        """Task heads of states [..., E] -> [..., T, D], L2-normalised."""
        y = self.out(states)
        return F.normalize(y.unflatten(-1, (self.num_heads, self.dim)).float(), dim=-1)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        return self.heads(self.states(x, valid)[:, -1])


def right_align(values: Tensor, lengths: Tensor, width: int) -> List[Tensor]:
    """Rows of a jagged tensor placed right-aligned into ``width`` slots.

    Args:
        values (Tensor): [V, *] the rows' values back to back.
        lengths (Tensor): int64 [B] values per row (rows longer than ``width`` keep their last ``width``).
        width (int): L.

    Returns:
        List[Tensor]: ``[B, L, *]`` the values (zeros at padding) and bool ``[B, L]`` valid.
    """
    ends = torch.cumsum(lengths, 0)  # [B]
    col = torch.arange(width, device=lengths.device)
    idx = ends.unsqueeze(1) - width + col  # [B, L]: the value at slot j
    valid = col >= width - lengths.clamp(max=width).unsqueeze(1)
    if values.shape[0] == 0:
        return [values.new_zeros((lengths.shape[0], width) + tuple(values.shape[1:])), valid]
    picked = values[idx.clamp(0, values.shape[0] - 1)]
    shape = valid.shape + (1,) * (values.dim() - 1)
    return [torch.where(valid.view(shape), picked, torch.zeros_like(picked)), valid]


@dataclass
class SequenceConfig:
    """Settings of the sequence user tower (YAML ``model.sequence``; used with ``model.user_tower=sequence``).

    The history length H is the data's (``data.history_length``), the width E = D is
    ``model.embedding_dim``.

    Args:
        num_blocks (int): transformer blocks.
        num_heads (int): attention heads (must divide ``model.embedding_dim``).
        dropout (float): dropout of the inputs and of every block.
    """

    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.num_heads < 1:
            raise ValueError(f"model.sequence.num_blocks and num_heads must be >= 1, got {self.num_blocks} and "
                             f"{self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.sequence.dropout must be in [0, 1), got {self.dropout}")
