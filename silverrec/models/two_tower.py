"""The two-tower model: one TorchRec ``EmbeddingBagCollection`` shared by both towers.

Layout (B pairs, F_u user keys, F_i item keys, E embedding dim, D output dim, T tasks)::

    KJT [keys: user__* (+ user__history), item__*; stride B]
        └─ EmbeddingBagCollection ─► KeyedTensor [B, (F_u + F_i) * E]
              ├─ UserTower (user__* keys; one head per task) ─► u [B, T, D]
              └─ ItemTower (item__* keys) ─► v [B, D]

The ``item__item_id`` table serves two features: the item's own id and the user history
(``user__history``, mean-pooled), so the history is pooled from the item-id table.

The model also holds the re-scoring layers used after retrieval (:meth:`TwoTower.task_logits`,
:meth:`TwoTower.task_scores`): the :class:`~silverrec.models.over_arch.OverArch`, which adds a
learned per-task correction to the dot-product logit of a (user, candidate) pair, and the
:class:`~silverrec.models.value_model.ValueModel`, which turns per-task predictions into one value.
"""
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.candidate_scorer import CandidateScorer, candidate_values, task_logits, task_scores
from silverrec.models.over_arch import OverArch, OverArchConfig
from silverrec.models.sequence_tower import SequenceConfig
from silverrec.models.side_features import side_feature_specs
from silverrec.models.similarity import Similarity
from silverrec.models.towers import ItemTower, UserTower
from silverrec.models.value_formula import default_value_formula
from silverrec.models.value_model import ValueModel
from silverrec.schema import HISTORY, ITEM_ID, Schema, item_key, user_key

USER_TOWERS = ("pooled", "sequence")


class TwoTower(nn.Module):
    """User and item towers over one shared ``EmbeddingBagCollection``, plus the re-scorers.

    Args:
        embedding_bag_collection (EmbeddingBagCollection): all tables of both sides.
        user_tower (UserTower): dense user tower, one head per task.
        item_tower (ItemTower): dense item tower.
        similarity (Similarity): the similarity used by loss, evaluation and serving.
        over_arch (Optional[OverArch]): learned per-task re-scorer of candidates (None: dot only).
        value_model (ValueModel): the value formula over the T task predictions.

    Buffers:
        task_rates (Tensor): float32 [T], each task's mean label over the training
            interactions (set by the trainer; turns per-task candidate distributions into
            expected labels, see :meth:`task_scores`).

    Call Args:
        features (KeyedJaggedTensor): both sides' keys, stride B (a side may have empty rows).

    Returns:
        Tuple[Tensor, Tensor]: u [B, T, D], v [B, D], L2-normalised.

    Example::

        >>> from silverrec.schema import Feature, Schema
        >>> schema = Schema((Feature("country", ("a", "b")),), (Feature("item_id", ("x", "y", "z")),))
        >>> model = build_two_tower(schema, TwoTowerConfig(embedding_dim=4, user_layers=[8], item_layers=[8],
        ...                                                 value_formula="click"))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=list(schema.user_keys + schema.item_keys),
        ...     values=torch.tensor([1, 2]), lengths=torch.tensor([1, 0, 1]))
        >>> [t.shape for t in model(kjt)]
        [torch.Size([1, 1, 8]), torch.Size([1, 8])]
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        user_tower: UserTower,
        item_tower: ItemTower,
        similarity: Similarity,
        over_arch: Optional[OverArch],
        value_model: ValueModel,
    ) -> None:
        super().__init__()
        if user_tower.out_features != item_tower.out_features:
            raise ValueError(
                f"user tower outputs {user_tower.out_features} dims, item tower {item_tower.out_features}"
            )
        num_tasks = len(value_model.task_names)
        if user_tower.num_heads != num_tasks:
            raise ValueError(f"the user tower has {user_tower.num_heads} heads for {num_tasks} tasks")
        if over_arch is not None and over_arch.num_tasks != num_tasks:
            raise ValueError(f"the OverArch scores {over_arch.num_tasks} tasks, the model has {num_tasks}")
        self.ebc = embedding_bag_collection
        self.user_tower = user_tower
        self.item_tower = item_tower
        self._set_scorers(similarity, over_arch, value_model)

    def _set_scorers(self, similarity: Similarity, over_arch: Optional[OverArch], value_model: ValueModel) -> None:
        """The re-scoring layers and the ``task_rates`` buffer (shared with the sequence model)."""
        self.similarity = similarity
        self.over_arch = over_arch
        self.value_model = value_model
        self.register_buffer("task_rates", torch.ones(len(value_model.task_names)))

    @property
    def task_names(self) -> List[str]:
        return self.value_model.task_names

    def forward(self, features: KeyedJaggedTensor) -> Tuple[Tensor, Tensor]:
        pooled = self.ebc(features)
        return self.user_tower(pooled), self.item_tower(pooled)

    def task_logits(self, u: Tensor, v: Tensor, over_arch: bool = True, history: Optional[Tensor] = None,
                    items: Optional[Tensor] = None) -> Tensor:
        """Per-task logits of candidates (see :mod:`silverrec.models.candidate_scorer`): the
        temperature-scaled dot product of each task's user embedding with the candidate, plus the
        OverArch's learned correction (if ``over_arch`` and the model has one).

        Args:
            u (Tensor): [B, T, D] user embeddings.
            v (Tensor): [B, K, D] candidate embeddings.
            history (Optional[Tensor]): int64 [B, L] history item ids, items (Optional[Tensor]):
                int64 [B, K] candidate item ids (-1 padding): needed by an OverArch with side features.

        Returns:
            Tensor: float32 [B, K, T].
        """
        return task_logits(self.similarity, self.over_arch if over_arch else None, u, v, history, items)

    @property
    def uses_history(self) -> bool:
        """Whether :meth:`task_logits` with the OverArch reads history and candidate item ids."""
        return self.over_arch is not None and self.over_arch.side_features is not None

    def task_scores(self, logits: Tensor, valid: Tensor) -> Tensor:
        """Per-task predictions [B, K, T] of the candidates: ``task_rates[t]`` times the softmax of
        task t's logits over the query's valid candidates (invalid ones score 0)."""
        return task_scores(logits, valid, self.task_rates)

    def value(self, task_scores: Tensor, valid: Tensor) -> Tensor:
        """The Value Model over ``task_scores`` [B, K, T]; invalid candidates get -inf. -> [B, K]."""
        return candidate_values(self.value_model, task_scores, valid)

    def candidate_scorer(self) -> CandidateScorer:
        """Copies of the re-scoring layers, for the serving graph."""
        return CandidateScorer(copy.deepcopy(self.similarity), copy.deepcopy(self.over_arch), copy.deepcopy(self.value_model), self.task_rates)


@dataclass
class TwoTowerConfig:
    """Sizes of the two-tower model (YAML keys under ``model:``).

    Args:
        embedding_dim (int): E, the dimension of every embedding table.
        user_layers (List[int]): user tower hidden sizes, then the output dimension D.
        item_layers (List[int]): item tower hidden sizes, then D (must end with the same D).
        temperature (float): initial softmax temperature of the similarity.
        learn_temperature (bool): learn the temperature.
        over_arch (Optional[OverArchConfig]): the OverArch re-scorer (a dict is converted;
            None: no OverArch, candidates are scored by the dot product only). Its ``num_tasks``
            is set from the schema.
        user_tower (str): ``"pooled"`` (user features + mean-pooled history -> MLP, the default)
            or ``"sequence"`` (causal self-attention over the history,
            :class:`~silverrec.models.sequence_two_tower.SequenceTwoTower`: E = D =
            ``embedding_dim``, the item embedding is the L2-normalised item-id row; ``user_layers``
            and ``item_layers`` are not used).
        sequence (Optional[SequenceConfig]): blocks, heads and dropout of the sequence tower.
        value_formula (Optional[str]): the Value Model's formula over the schema's task names,
            e.g. ``"0.6*like + 0.3*share + 0.1*watch"`` (see :mod:`silverrec.models.value_formula`);
            None: the data's default (``silverrec-train`` asks the data set,
            :meth:`RecDataset.default_value_formula`; :func:`build_two_tower` applies
            :func:`~silverrec.models.value_formula.default_value_formula` to the schema's tasks).
    """

    embedding_dim: int = 64
    user_layers: List[int] = field(default_factory=lambda: [256, 64])
    item_layers: List[int] = field(default_factory=lambda: [256, 64])
    temperature: float = 0.05
    learn_temperature: bool = True
    over_arch: Optional[Union[OverArchConfig, Dict[str, Any]]] = field(default_factory=OverArchConfig)
    value_formula: Optional[str] = None
    user_tower: str = "pooled"
    sequence: Optional[Union[SequenceConfig, Dict[str, Any]]] = field(default_factory=SequenceConfig)

    def __post_init__(self) -> None:
        self.user_layers, self.item_layers = list(self.user_layers), list(self.item_layers)
        if self.over_arch is not None and not isinstance(self.over_arch, OverArchConfig):
            self.over_arch = OverArchConfig(**dict(self.over_arch))
        if self.user_tower not in USER_TOWERS:
            raise ValueError(f"model.user_tower must be one of {', '.join(USER_TOWERS)}, got {self.user_tower!r}")
        if self.sequence is None:
            self.sequence = SequenceConfig()
        elif not isinstance(self.sequence, SequenceConfig):
            self.sequence = SequenceConfig(**dict(self.sequence))


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
    DistributedModelParallel, which materialises the shards itself). ``config.user_tower ==
    "sequence"`` builds a :class:`~silverrec.models.sequence_two_tower.SequenceTwoTower`.
    """
    if config.user_tower == "sequence":
        from silverrec.models.sequence_two_tower import build_sequence_two_tower

        return build_sequence_two_tower(schema, config, device)
    if config.user_layers[-1] != config.item_layers[-1]:
        raise ValueError(
            f"model.user_layers ends with {config.user_layers[-1]}, model.item_layers with "
            f"{config.item_layers[-1]}: both towers must output the same dimension"
        )
    e = config.embedding_dim
    tasks = list(schema.task_names)
    formula = config.value_formula if config.value_formula is not None else default_value_formula(tasks)
    value_model = ValueModel(formula, tasks)  # formula errors surface here, at build/load time
    ebc = EmbeddingBagCollection(tables=embedding_tables(schema, e), device=device)
    user_keys, item_keys = schema.user_keys, schema.item_keys
    over_arch = None
    if config.over_arch is not None:
        oa = dataclasses.replace(config.over_arch, num_tasks=len(tasks), num_items=schema.num_items)
        over_arch = OverArch(config.user_layers[-1], oa, side_feature_specs(schema, oa.side_features))
    return TwoTower(
        ebc,
        UserTower(user_keys, in_features=e * len(user_keys), layer_sizes=config.user_layers, num_heads=len(tasks)),
        ItemTower(item_keys, in_features=e * len(item_keys), layer_sizes=config.item_layers),
        Similarity(config.temperature, config.learn_temperature),
        over_arch,
        value_model,
    )
