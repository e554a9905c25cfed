"""The exported artifact: one ``.pt2`` file (torch.export) plus silverrec metadata inside it.

The metadata (``silverrec.json`` in the archive) carries the schema needed to encode requests,
K, a version stamp (hash of every weight and buffer) and the format version. A truncated or
corrupted file, a file that is not a silverrec export, or one of another format version fails
with a ``ValueError`` that says which.
"""
import hashlib
import json
import os
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

import silverrec  # noqa: F401  (registers torch.ops.silverrec before loading a graph)
from silverrec.atomic_file import write_atomically
from silverrec.schema import HISTORY, Schema

FORMAT_VERSION = 1
_META = "silverrec.json"


def version_stamp(program: torch.export.ExportedProgram) -> str:
    """sha256 (first 16 hex digits) over the names and bytes of every parameter and buffer."""
    h = hashlib.sha256()
    for name, t in sorted({**program.state_dict, **dict(program.constants)}.items()):
        if isinstance(t, Tensor):
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_artifact(program: torch.export.ExportedProgram, path: str, metadata: Dict[str, Any]) -> Dict[str, Any]:
    """Writes the program and metadata atomically (temporary file + rename); returns the metadata."""
    meta = {**metadata, "format_version": FORMAT_VERSION, "version": version_stamp(program)}
    write_atomically(path, lambda tmp: torch.export.save(program, tmp, extra_files={_META: json.dumps(meta)}), ".pt2")
    return meta


def load_artifact(path: str) -> Tuple[torch.export.ExportedProgram, Dict[str, Any]]:
    """Loads a silverrec ``.pt2``; raises ``FileNotFoundError`` / ``ValueError`` naming the problem."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model {path!r} does not exist")
    extra = {_META: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as err:
        raise ValueError(f"{path!r} is not a readable torch.export file (truncated or corrupted?): {type(err).__name__}: {err}") from err
    if not extra[_META]:
        raise ValueError(f"{path!r} is a torch.export file but not a silverrec export (no {_META})")
    meta = json.loads(extra[_META])
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has silverrec format version {meta.get('format_version')}, this silverrec reads {FORMAT_VERSION}; re-export it"
        )
    return program, meta


class ExportedRetriever:
    """A loaded export, ready to answer queries (needs only ``silverrec`` installed).

    Args:
        path (str): the ``.pt2`` file written by ``silverrec-export``.

    Example::

        >>> retriever = ExportedRetriever("runs/demo/retrieval.pt2")  # doctest: +SKIP
        >>> ids, scores = retriever.search(values, lengths)          # doctest: +SKIP
    """

    def __init__(self, path: str) -> None:
        program, self.metadata = load_artifact(path)
        self.schema = Schema.from_dict(self.metadata["schema"])
        self.k = int(self.metadata["k"])
        self.version = str(self.metadata["version"])
        self._module = program.module()
        self._vocab_sizes = torch.tensor(
            [f.num_embeddings for f in self.schema.user_features] + [self.schema.num_items], dtype=torch.int64
        )
        self._names = [f.name for f in self.schema.user_features] + [HISTORY]

    def search(self, values: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """Top-K item rows [B, K] and scores [B, K] for encoded users (see ``encode_users``)."""
        self._check(values, lengths)
        with torch.no_grad():
            return self._module(values, lengths)

    def item_ids(self, rows: Tensor) -> list:
        """External item ids of item rows (nested lists like ``rows``)."""
        vocab = self.schema.item_ids
        return [[vocab[r] if r >= 0 else None for r in row] for row in rows.tolist()]

    def _check(self, values: Tensor, lengths: Tensor) -> None:
        f = len(self._names)
        if lengths.dim() != 2 or lengths.shape[1] != f or lengths.dtype != torch.int64:
            raise ValueError(f"lengths must be int64 [B, {f}] (columns {self._names}), got {lengths.dtype} {tuple(lengths.shape)}")
        if lengths.shape[0] == 0:
            raise ValueError("lengths has an empty batch")
        if bool((lengths < 0).any()):
            raise ValueError("lengths has negative entries")
        if values.dim() != 1 or values.dtype != torch.int64 or values.numel() != int(lengths.sum()):
            raise ValueError(f"values must be int64 [{int(lengths.sum())}] (= lengths.sum()), got {values.dtype} {tuple(values.shape)}")
        column = torch.repeat_interleave(torch.arange(f), lengths.sum(0))
        bad = (values < 0) | (values >= self._vocab_sizes[column])
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            c = int(column[i])
            raise ValueError(
                f"feature {self._names[c]!r}: id {int(values[i])} is outside its vocabulary [0, {int(self._vocab_sizes[c])})"
            )
