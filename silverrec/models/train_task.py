"""The training task: the two-tower model plus its loss, the unit DistributedModelParallel wraps."""
from typing import Tuple

from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.losses import InBatchSoftmaxLoss
from silverrec.models.two_tower import TwoTower


class TwoTowerTrainTask(nn.Module):
    """Computes the retrieval loss of a batch (as TorchRec's ``TwoTowerTrainTask``).

    Args:
        two_tower (TwoTower): the model.
        loss (InBatchSoftmaxLoss): the in-batch softmax loss.

    Call Args:
        features (KeyedJaggedTensor): both sides of B (user, positive item) pairs.
        item_rows (Tensor): int64 [B] positive item rows.

    Returns:
        Tuple[Tensor, Tuple[Tensor, Tensor]]: the scalar loss and (u [B, D], v [B, D]).
    """

    def __init__(self, two_tower: TwoTower, loss: InBatchSoftmaxLoss) -> None:
        super().__init__()
        self.two_tower = two_tower
        self.loss = loss

    def forward(self, features: KeyedJaggedTensor, item_rows: Tensor) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        u, v = self.two_tower(features)
        logits = self.two_tower.similarity.logits(u, v)
        return self.loss(logits, item_rows), (u, v)
