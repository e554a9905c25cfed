"""An on-disk ``.npz`` cache of :class:`~silverrec.data.dataset.RecDataset` objects.

Generating the default synthetic world takes tens of seconds on two cores; the builders accept
a ``cache_dir`` and store the result under a key derived from the full config (see
:meth:`SyntheticConfig.digest <silverrec.data.synthetic.SyntheticConfig.digest>`). Files are
written atomically (temporary file in the same directory + ``os.replace``), so a killed run never
leaves a half-written entry, and read without pickle. The cache directory is always passed in
(never read from the environment).

Example::

    >>> import tempfile
    >>> from silverrec.data.synthetic import SyntheticConfig, generate
    >>> d = tempfile.mkdtemp()
    >>> ds = cached(d, "tiny", lambda: generate(SyntheticConfig.preset("tiny")))
    >>> again = cached(d, "tiny", lambda: None)  # served from disk, builder not called
    >>> bool((again.interactions.item == ds.interactions.item).all())
    True
"""
import json
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, Union

import numpy as np

from silverrec.atomic_file import write_atomically
from silverrec.data.dataset import FeatureTable, Interactions, JaggedColumn, RecDataset, Split
from silverrec.schema import Schema

FORMAT_VERSION = 1


def _table_arrays(prefix: str, table: FeatureTable, names: list) -> Dict[str, np.ndarray]:
    out = {f"{prefix}.num_rows": np.array(table.num_rows, dtype=np.int64)}
    for i, name in enumerate(names):
        out[f"{prefix}.{i}.values"] = table.columns[name].values
        out[f"{prefix}.{i}.offsets"] = table.columns[name].offsets
    return out


def _table_from(z: Dict[str, np.ndarray], prefix: str, names: list) -> FeatureTable:
    cols = {name: JaggedColumn(z[f"{prefix}.{i}.values"], z[f"{prefix}.{i}.offsets"]) for i, name in enumerate(names)}
    return FeatureTable(int(z[f"{prefix}.num_rows"]), cols)


def save_dataset(ds: RecDataset, path: Union[str, Path]) -> None:
    """Writes ``ds`` to ``path`` (an ``.npz`` file) atomically.

    Args:
        ds (RecDataset): the data set (its tables must have a column per schema feature).
        path (str | Path): destination; its directory must exist.
    """
    path = Path(path)
    user_names = [f.name for f in ds.schema.user_features]
    item_names = [f.name for f in ds.schema.item_features]
    label_names = list(ds.interactions.labels)
    meta = {"format": FORMAT_VERSION, "schema": ds.schema.to_dict(), "labels": label_names,
            "value_formula": ds.value_formula}
    arrays: Dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    arrays.update(_table_arrays("users", ds.users, user_names))
    arrays.update(_table_arrays("items", ds.items, item_names))
    it = ds.interactions
    arrays.update({"inter.user": it.user, "inter.item": it.item, "inter.timestamp": it.timestamp})
    arrays.update({f"inter.label.{i}": it.labels[name] for i, name in enumerate(label_names)})
    arrays.update({f"split.{name}": ds.split.get(name) for name in ("train", "valid", "test")})
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare path
            np.savez(f, **arrays)

    write_atomically(path, write, ".tmp")


def load_dataset(path: Union[str, Path]) -> RecDataset:
    """Reads a data set written by :func:`save_dataset`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a data set file of this format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a data set .npz written by save_dataset")
    try:
        with np.load(path, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}
        meta = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable data set file ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    schema = Schema.from_dict(meta["schema"])
    users = _table_from(z, "users", [f.name for f in schema.user_features])
    items = _table_from(z, "items", [f.name for f in schema.item_features])
    labels = {name: z[f"inter.label.{i}"] for i, name in enumerate(meta["labels"])}
    inter = Interactions(z["inter.user"], z["inter.item"], z["inter.timestamp"], labels)
    split = Split(train=z["split.train"], valid=z["split.valid"], test=z["split.test"])
    return RecDataset(schema, users, items, inter, split, value_formula=meta.get("value_formula"))


def cached(cache_dir: Union[str, Path], key: str, build: Callable[[], RecDataset]) -> RecDataset:
    """Returns the data set stored under ``key`` in ``cache_dir``, building and storing it first
    if it is absent. An unreadable entry is rebuilt with a warning.

    Args:
        cache_dir (str | Path): directory of the cache (created if missing).
        key (str): file stem; must be a plain name (letters, digits, ``-``, ``_``, ``.``).
        build (Callable[[], RecDataset]): makes the data set on a miss.

    Returns:
        RecDataset: the cached or freshly built data set.
    """
    if not key or any(not (c.isalnum() or c in "-_.") for c in key):
        raise ValueError(f"cache key must be a plain file name, got {key!r}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.npz"
    if path.is_file():
        try:
            return load_dataset(path)
        except ValueError as e:
            warnings.warn(f"rebuilding unreadable cache entry: {e}", stacklevel=2)
    ds = build()
    save_dataset(ds, path)
    return ds
