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

FORMAT_VERSION = 1
_META = "silverrec.json"


def version_stamp(program: torch.export.ExportedProgram) -> str:
    """sha256 (first 16 hex digits) over the names and bytes of every parameter and buffer."""
    h = hashlib.sha256()
    for name, t in sorted({**program.state_dict, **dict(program.constants)}.items()):
        if isinstance(t, Tensor):
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
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
