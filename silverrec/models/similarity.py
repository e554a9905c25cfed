"""The one similarity of silverrec: inner product of the towers' outputs, with a learned scale.

Used by the training loss (``logits``), evaluation, the index and serving (``pairwise``).
The towers L2-normalise, so the inner product is a cosine in [-1, 1]; the learned temperature
only sharpens the softmax of the loss and never changes a ranking.
"""
import math

import torch
from torch import Tensor, nn


class Similarity(nn.Module):
    """Inner-product similarity with an optional learned temperature.

    Args:
        temperature (float): initial softmax temperature tau (logits = <u, v> / tau).
        learn_temperature (bool): learn tau (as log(1/tau), clamped to [0, log 100]).

    Example::

        >>> sim = Similarity(temperature=0.05)
        >>> u, v = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1), torch.randn(5, 8)
        >>> sim.pairwise(u, v).shape
        torch.Size([2, 5])
    """

    def __init__(self, temperature: float = 0.05, learn_temperature: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"Similarity.temperature must be > 0, got {temperature}")
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @staticmethod
    def pairwise(u: Tensor, v: Tensor) -> Tensor:
        """Scores of every (query, item) pair: [B, D] x [N, D] -> [B, N]."""
        return u @ v.t()

    @staticmethod
    def paired(u: Tensor, v: Tensor) -> Tensor:
        """Scores of aligned pairs: [B, D] x [B, D] -> [B]."""
        return (u * v).sum(-1)

    def scale(self) -> Tensor:
        """1 / tau, clamped to [1, 100]."""
        return self.log_scale.clamp(0.0, math.log(100.0)).exp()

    def logits(self, u: Tensor, v: Tensor) -> Tensor:
        """Temperature-scaled pairwise scores for the loss: [B, D] x [N, D] -> [B, N]."""
        return self.pairwise(u, v) * self.scale()
