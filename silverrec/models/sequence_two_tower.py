"""The two-tower model with the sequence user tower (``model.user_tower=sequence``).

Layout (B rows, L <= H history positions, E = D the embedding dim, T tasks)::

    KJT [keys: user__history, item__item_id, (others, unused); stride B]
        └─ EmbeddingCollection (one table: item_id; features user__history, item__item_id)
              ├─ user__history JaggedTensor ─► right-aligned [B, H, E] ─► SequenceUserTower ─► u [B, T, D]
              └─ item__item_id JaggedTensor ─► IdItemTower (L2-normalise) ─► v [B, D]

One TorchRec ``EmbeddingCollection`` table embeds both the history items (unpooled: the tower
attends over them) and the candidate items, so the input and output item embeddings are shared,
as in SASRec. The static user features and the item attributes are not read by the towers (the
OverArch's side features read the attributes). Everything else -- similarity, OverArch, Value
Model, ``task_rates`` -- is :class:`~silverrec.models.two_tower.TwoTower`'s, so evaluation,
publishing and serving take a ``SequenceTwoTower`` wherever they take a ``TwoTower``.
"""
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.over_arch import OverArch
from silverrec.models.sequence_tower import SequenceUserTower, right_align
from silverrec.models.side_features import side_feature_specs
from silverrec.models.similarity import Similarity
from silverrec.models.two_tower import TwoTower, TwoTowerConfig
from silverrec.models.value_formula import default_value_formula
from silverrec.models.value_model import ValueModel
from silverrec.schema import HISTORY, ITEM_ID, Schema, item_key, user_key

ITEM_TABLE = ITEM_ID
"""Name of the EmbeddingCollection table of item ids."""


class IdItemTower(nn.Module):
    """Item tower of the sequence model: the item-id embedding, L2-normalised.

    Args:
        dim (int): D.

    Call Args:
        emb (Tensor): [B, D] item-id embeddings (zeros for a row without an id).

    Returns:
        Tensor: [B, D] (a zero row stays zero).

    Example::

        >>> IdItemTower(4)(torch.tensor([[3.0, 0.0, 4.0, 0.0]])).tolist()
        [[0.6000000238418579, 0.0, 0.800000011920929, 0.0]]
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    @property
    def out_features(self) -> int:
        return self.dim

    def forward(self, emb: Tensor) -> Tensor:
        return F.normalize(emb.float(), dim=-1)


class SequenceTwoTower(TwoTower):
    """Sequence user tower and id item tower over one ``EmbeddingCollection``, plus the re-scorers.

    Args:
        embedding_collection (EmbeddingCollection): the item-id table (features
            ``user__history`` and ``item__item_id``).
        user_tower (SequenceUserTower): the causal transformer, one head per task.
        similarity (Similarity): the similarity used by loss, evaluation and serving.
        over_arch (Optional[OverArch]): learned per-task re-scorer of candidates (None: dot only).
        value_model (ValueModel): the value formula over the T task predictions.

    Call Args:
        features (KeyedJaggedTensor): at least ``user__history`` (each row's items oldest first;
            rows longer than H keep their latest H) and ``item__item_id``, stride B.

    Returns:
        Tuple[Tensor, Tensor]: u [B, T, D], v [B, D], L2-normalised.

    Example::

        >>> from silverrec.schema import Feature, Schema
        >>> schema = Schema((), (Feature("item_id", ("x", "y", "z")),), history_length=4)
        >>> model = build_sequence_two_tower(schema, TwoTowerConfig(embedding_dim=8, user_tower="sequence",
        ...                                                          over_arch=None, value_formula="click"))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user__history", "item__item_id"],
        ...                                           values=torch.tensor([0, 2, 1, 1]), lengths=torch.tensor([2, 1, 1, 0]))
        >>> [t.shape for t in model(kjt)]
        [torch.Size([2, 1, 8]), torch.Size([2, 8])]
    """

    def __init__(self, embedding_collection: EmbeddingCollection, user_tower: SequenceUserTower,
                 similarity: Similarity, over_arch: "OverArch | None", value_model: ValueModel) -> None:
        nn.Module.__init__(self)
        num_tasks = len(value_model.task_names)
        if user_tower.num_heads != num_tasks:
            raise ValueError(f"the user tower has {user_tower.num_heads} heads for {num_tasks} tasks")
        if over_arch is not None and over_arch.num_tasks != num_tasks:
            raise ValueError(f"the OverArch scores {over_arch.num_tasks} tasks, the model has {num_tasks}")
        self.ec = embedding_collection
        self.user_tower = user_tower
        self.item_tower = IdItemTower(user_tower.dim)
        self._set_scorers(similarity, over_arch, value_model)

    @property
    def item_table(self) -> Tensor:
        """The item-id embedding table [N, E] (a parameter)."""
        return self.ec.embeddings[ITEM_TABLE].weight

    def forward(self, features: KeyedJaggedTensor):
        emb = self.ec(features)
        history = emb[user_key(HISTORY)]
        x, valid = right_align(history.values(), history.lengths(), self.user_tower.max_length)
        item = emb[item_key(ITEM_ID)]
        v, _ = right_align(item.values(), item.lengths(), 1)
        return self.user_tower(x, valid), self.item_tower(v[:, 0])

    def sequence_states(self, features: KeyedJaggedTensor, width: int) -> Tensor:
        """The final states [B, L, E] of every position of the right-aligned history
        (``width`` = L positions; for training on every position)."""
        history = self.ec(features)[user_key(HISTORY)]
        x, valid = right_align(history.values(), history.lengths(), width)
        return self.user_tower.states(x, valid)


def build_sequence_two_tower(schema: Schema, config: TwoTowerConfig, device: torch.device = torch.device("cpu")) -> SequenceTwoTower:
    """Builds a :class:`SequenceTwoTower` sized by ``schema`` (item ids, history length H, tasks)
    and ``config`` (``embedding_dim``, ``sequence``, ``temperature``, ``over_arch``, ``value_formula``)."""
    e = config.embedding_dim
    tasks = list(schema.task_names)
    formula = config.value_formula if config.value_formula is not None else default_value_formula(tasks)
    value_model = ValueModel(formula, tasks)
    table = EmbeddingConfig(name=ITEM_TABLE, embedding_dim=e, num_embeddings=schema.num_items,
                            feature_names=[user_key(HISTORY), item_key(ITEM_ID)])
    ec = EmbeddingCollection(tables=[table], device=device)
    if device.type != "meta":
        nn.init.normal_(ec.embeddings[ITEM_TABLE].weight, std=e ** -0.5)
    seq = config.sequence
    tower = SequenceUserTower(e, schema.history_length, seq.num_blocks, seq.num_heads, seq.dropout, len(tasks))
    over_arch = None
    if config.over_arch is not None:
        oa = dataclasses.replace(config.over_arch, num_tasks=len(tasks), num_items=schema.num_items)
        over_arch = OverArch(e, oa, side_feature_specs(schema, oa.side_features))
    return SequenceTwoTower(ec, tower, Similarity(config.temperature, config.learn_temperature), over_arch, value_model)
