"""Feature, attribute and task declarations shared by data, models and retrieval.

A :class:`Schema` names every categorical feature of users and items with its vocabulary
(external value <-> contiguous id), and every task the models predict. Data loaders produce
it, models size their embedding tables from it, the filter language resolves
``feature:value`` terms through it, and the exported serving module carries it so that a
request with external values can be encoded without the training data.

Example::

    >>> from silverrec.schema import Feature, Schema, Task
    >>> schema = Schema(
    ...     user_features=(Feature("country", ("us", "de")),),
    ...     item_features=(Feature("item_id", ("a", "b", "c")), Feature("tags", ("x", "y"), max_length=3)),
    ...     tasks=(Task("click"),),
    ... )
    >>> schema.item_feature("tags").id_of("y")
    1
"""
from dataclasses import dataclass, field
from enum import Enum, unique
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

ITEM_ID = "item_id"
"""Name of the item-id feature; it must be the first item feature."""

HISTORY = "history"
"""Name of the user-history feature (jagged item ids, pooled from the ``item_id`` table)."""


def user_key(name: str) -> str:
    """The KeyedJaggedTensor key (TorchRec feature name) of a user feature."""
    return f"user__{name}"


def item_key(name: str) -> str:
    """The KeyedJaggedTensor key (TorchRec feature name) of an item feature."""
    return f"item__{name}"


@unique
class TaskKind(Enum):
    BINARY = "binary"  # label in {0, 1}, trained with a logistic loss
    REGRESSION = "regression"  # label in [0, 1] (e.g. watch fraction)


@dataclass(frozen=True)
class Feature:
    """A categorical feature with a fixed vocabulary.

    Args:
        name (str): feature name, unique within its side (user or item).
        vocab (Tuple[str, ...]): external values; value ``vocab[i]`` has id ``i``.
        max_length (int): 1 for single-valued features, the largest number of values per row
            for multi-valued (jagged) ones such as tags.
        filterable (bool): item attributes usable in filter expressions.
    """

    name: str
    vocab: Tuple[str, ...]
    max_length: int = 1
    filterable: bool = False
    _index: Dict[str, int] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Feature.name must be a non-empty string")
        if len(self.vocab) == 0:
            raise ValueError(f"Feature {self.name!r}: vocab is empty")
        if self.max_length < 1:
            raise ValueError(f"Feature {self.name!r}: max_length must be >= 1, got {self.max_length}")
        object.__setattr__(self, "vocab", tuple(str(v) for v in self.vocab))
        index = {v: i for i, v in enumerate(self.vocab)}
        if len(index) != len(self.vocab):
            raise ValueError(f"Feature {self.name!r}: vocab has duplicate values")
        object.__setattr__(self, "_index", index)

    @property
    def num_embeddings(self) -> int:
        return len(self.vocab)

    def id_of(self, value: object) -> int:
        """The id of an external value; raises ``KeyError`` naming the feature and value."""
        try:
            return self._index[str(value)]
        except KeyError:
            raise KeyError(f"feature {self.name!r} has no value {value!r} in its vocabulary") from None

    def has(self, value: object) -> bool:
        return str(value) in self._index


@dataclass(frozen=True)
class Task:
    """A prediction task (one user-tower head, one OverArch logit).

    Args:
        name (str): task name, used in configs and Value Model formulas.
        kind (TaskKind): binary (logistic) or regression in [0, 1].
    """

    name: str
    kind: TaskKind = TaskKind.BINARY


@dataclass(frozen=True)
class Schema:
    """Everything needed to encode users, items and requests.

    Args:
        user_features (Tuple[Feature, ...]): static user features (country, language, ...).
            The user history is implicit: a jagged ``history`` feature over ``item_id``.
        item_features (Tuple[Feature, ...]): item features; the first is ``item_id``.
        tasks (Tuple[Task, ...]): tasks; the first is the retrieval task (``click``).
        history_length (int): number of most recent items kept in the user history.
    """

    user_features: Tuple[Feature, ...]
    item_features: Tuple[Feature, ...]
    tasks: Tuple[Task, ...] = (Task("click"),)
    history_length: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_features", tuple(self.user_features))
        object.__setattr__(self, "item_features", tuple(self.item_features))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.item_features or self.item_features[0].name != ITEM_ID:
            raise ValueError(f"Schema.item_features must start with {ITEM_ID!r}")
        for side, feats in (("user_features", self.user_features), ("item_features", self.item_features)):
            names = [f.name for f in feats]
            if len(set(names)) != len(names):
                raise ValueError(f"Schema.{side} has duplicate names: {names}")
        if any(f.name == HISTORY for f in self.user_features):
            raise ValueError(f"Schema.user_features must not declare {HISTORY!r}; it is implicit")
        if not self.tasks:
            raise ValueError("Schema.tasks is empty")
        if self.history_length < 1:
            raise ValueError(f"Schema.history_length must be >= 1, got {self.history_length}")

    @property
    def num_items(self) -> int:
        return self.item_features[0].num_embeddings

    @property
    def item_ids(self) -> Tuple[str, ...]:
        """External item ids, indexed by item row."""
        return self.item_features[0].vocab

    @property
    def task_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def filterable_features(self) -> Tuple[Feature, ...]:
        return tuple(f for f in self.item_features if f.filterable)

    def user_feature(self, name: str) -> Feature:
        return _find(self.user_features, name, "user")

    def item_feature(self, name: str) -> Feature:
        return _find(self.item_features, name, "item")

    @property
    def user_keys(self) -> Tuple[str, ...]:
        """KJT keys of the user side, history last: ``user__<feature>..., user__history``."""
        return tuple(user_key(f.name) for f in self.user_features) + (user_key(HISTORY),)

    @property
    def item_keys(self) -> Tuple[str, ...]:
        """KJT keys of the item side, ``item__item_id`` first."""
        return tuple(item_key(f.name) for f in self.item_features)

    def to_dict(self) -> Dict[str, object]:
        """A JSON-able description (stored in checkpoints and exported artifacts)."""
        return {
            "user_features": [_feature_to_dict(f) for f in self.user_features],
            "item_features": [_feature_to_dict(f) for f in self.item_features],
            "tasks": [{"name": t.name, "kind": t.kind.value} for t in self.tasks],
            "history_length": self.history_length,
        }

    @staticmethod
    def from_dict(d: Mapping[str, object]) -> "Schema":
        return Schema(
            user_features=tuple(_feature_from_dict(f) for f in d["user_features"]),  # type: ignore[union-attr]
            item_features=tuple(_feature_from_dict(f) for f in d["item_features"]),  # type: ignore[union-attr]
            tasks=tuple(Task(t["name"], TaskKind(t["kind"])) for t in d["tasks"]),  # type: ignore[index,union-attr]
            history_length=int(d["history_length"]),  # type: ignore[arg-type]
        )


def _find(features: Iterable[Feature], name: str, side: str) -> Feature:
    for f in features:
        if f.name == name:
            return f
    known = [f.name for f in features]
    raise KeyError(f"unknown {side} feature {name!r}; known: {known}")


def _feature_to_dict(f: Feature) -> Dict[str, object]:
    return {"name": f.name, "vocab": list(f.vocab), "max_length": f.max_length, "filterable": f.filterable}


def _feature_from_dict(d: Mapping[str, object]) -> Feature:
    return Feature(
        name=str(d["name"]),
        vocab=tuple(d["vocab"]),  # type: ignore[arg-type]
        max_length=int(d["max_length"]),  # type: ignore[arg-type]
        filterable=bool(d["filterable"]),
    )


def feature_names(features: Sequence[Feature]) -> List[str]:
    return [f.name for f in features]
