"""Data sets for silverrec: the in-memory containers, the embedded synthetic world, and loaders
for every MovieLens release, RecBole atomic files and generic Parquet/CSV tables.

Every source produces a :class:`RecDataset` (schema + user/item feature tables + interactions
sorted by (user, timestamp) + a per-user time-ordered split), so models never see where the
data came from.

Example::

    >>> from silverrec.data import synthetic_dataset
    >>> ds = synthetic_dataset("tiny")
    >>> ds.validate()
"""
from silverrec.data._loading import time_fraction_split
from silverrec.data.cache import cached, load_dataset, save_dataset
from silverrec.data.dataset import (FeatureTable, Interactions, JaggedColumn, RecDataset, Split,
                                    time_ordered_split)
from silverrec.data.movielens import load_movielens
from silverrec.data.recbole import load_recbole
from silverrec.data.synthetic import SyntheticConfig, generate, synthetic_dataset
from silverrec.data.tables import load_tables

__all__ = [
    "FeatureTable", "Interactions", "JaggedColumn", "RecDataset", "Split", "SyntheticConfig", "cached",
    "generate", "load_dataset", "load_movielens", "load_recbole", "load_tables", "save_dataset", "synthetic_dataset",
    "time_fraction_split", "time_ordered_split",
]
