"""Evaluation protocols: which interactions are held out, and which metrics rank them.

* ``temporal`` (default): the data's own per-user time-ordered split (each loader's
  ``valid_fraction`` / ``test_fraction`` of every user's latest interactions); exact full-corpus
  retrieval scored by recall@K and NDCG@K against every held-out item, the items seen before the
  split excluded from the ranking.
* ``leave_last_out`` (the protocol of the sequential-recommendation literature, e.g. SASRec and
  HSTU in generative-recommenders): per user, the last interaction is the test item and the
  second-to-last the validation item, the rest trains (users with fewer than 3 interactions
  only train; ties in time keep the file order). Each held-out item is ranked against the full
  corpus with the user's other interacted items removed; the metrics are HR@K (the item is in
  the top K), NDCG@K (``1 / log2(rank + 1)`` inside the top K, else 0) and MRR (``1 / rank``
  over the full ranking), with cut-offs 10, 50 and 200 unless ``ks`` is set. Ties in score are
  broken by the lower item row, as everywhere in silverrec.

Example::

    >>> from silverrec.data import synthetic_dataset
    >>> ds = EvalConfig("leave_last_out").apply(synthetic_dataset("tiny"))
    >>> EvalConfig("leave_last_out").cutoffs([10, 50, 100])
    [10, 50, 200]
"""
import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence

from silverrec.data.dataset import RecDataset, Split, time_ordered_split

PROTOCOLS = ("temporal", "leave_last_out")
LEAVE_LAST_OUT_KS = (10, 50, 200)


def leave_last_out_split(dataset: RecDataset) -> Split:
    """Per user: the last interaction to test, the second-to-last to validation, the rest to train.

    Args:
        dataset (RecDataset): interactions sorted by (user, time).

    Returns:
        Split: index arrays into the M interactions; users with fewer than 3 interactions are
        in train only.
    """
    it = dataset.interactions
    return time_ordered_split(it.user, it.timestamp, valid_per_user=1, test_per_user=1, min_train=1)


@dataclass
class EvalConfig:
    """How a run is evaluated (YAML ``eval:``).

    Args:
        protocol (str): ``temporal`` or ``leave_last_out`` (see the module docstring).
        ks (Optional[List[int]]): cut-offs; None: the protocol's own (``temporal``: the
            caller's default, ``trainer.ks``; ``leave_last_out``: 10, 50, 200).
        valid_trains (bool): the validation interactions also train. generative-recommenders
            trains its leave-last-out runs this way (``ignore_last_n=1``: every item but the
            test item is a training target), so its published SASRec / HSTU numbers compare with
            a run that sets this. The validation metrics then score items the model trained on
            (not held out); the test item stays held out either way.
    """

    protocol: str = "temporal"
    ks: Optional[List[int]] = None
    valid_trains: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"eval.protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.ks is not None:
            self.ks = [int(k) for k in self.ks]
            if not self.ks or min(self.ks) < 1:
                raise ValueError(f"eval.ks must be positive cut-offs, got {self.ks}")

    def cutoffs(self, default: Sequence[int]) -> List[int]:
        """The cut-offs to report: ``ks`` if set, else the protocol's default."""
        if self.ks is not None:
            return sorted(self.ks)
        return list(LEAVE_LAST_OUT_KS) if self.protocol == "leave_last_out" else sorted(int(k) for k in default)

    def apply(self, dataset: RecDataset) -> RecDataset:
        """The data set with this protocol's split (``temporal`` without ``valid_trains``:
        unchanged, the same object)."""
        split = dataset.split if self.protocol == "temporal" else leave_last_out_split(dataset)
        if self.valid_trains:
            split = dataclasses.replace(split, valid_trains=True)
        if split is dataset.split:
            return dataset
        return dataclasses.replace(dataset, split=split)
