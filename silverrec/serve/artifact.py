"""The exported artifact: one ``.pt2`` package holding the serving graph, the item tower and
silverrec metadata.

The package (``torch.export`` PT2 archive) holds two programs: ``model``, the serving graph, and
``item_tower``, the item tower over padded item slots (to embed items added after publish). The
metadata (``silverrec.json``) carries the schema needed to encode requests, K, the filter
dictionary, a version stamp (a hash of the schema and of every weight, buffer and index tensor of
both programs) and the format version. A truncated or corrupted file, a file that is not a
silverrec export, or one of another format version fails with a ``ValueError`` that says which.

Optionally the package also holds the serving graph compiled by AOTInductor
(:mod:`silverrec.serve.aoti`; metadata ``"aoti"``), which :class:`~silverrec.serve.Retriever`
prefers where it can run. :func:`load_artifact` reads the programs without loading it.

Memory: :func:`open_artifact` maps the large tensor records of the file (the index, the embedding
tables) into memory read-only (copy-on-write) instead of reading them onto the heap, so loading
costs no copy, only the pages a query touches become resident, and several server processes on
one machine share one copy of those pages in the page cache (``benchmarks/scale.py`` measures
the RSS of a second process). ``mmap=False`` reads them as ``torch.export.load`` does.

Integrity: :func:`save_artifact` appends a manifest of the sha256 of every archive entry
(:mod:`silverrec.serve.integrity`; metadata ``"integrity"``), and :func:`open_artifact` /
:func:`load_artifact` hash the file once before reading anything from it (about 70 ms for the
demo's 80 MiB) and refuse a difference with an :class:`~silverrec.serve.integrity.IntegrityError`
naming the entry (a weight, an index tensor, the metadata or the AOTInductor library). An export
written before checksums were recorded loads with a warning.
"""
import hashlib
import json
import logging
import os
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.export.pt2_archive import PT2ArchiveReader
from torch.export.pt2_archive._package import _load_exported_programs, _load_extra_files, package_pt2

import silverrec  # noqa: F401  (registers torch.ops.silverrec before loading a graph)
from silverrec.atomic_file import write_atomically
from silverrec.serve.integrity import ALGORITHM, MANIFEST, IntegrityError, IntegrityReport, verify_manifest, write_manifest

log = logging.getLogger(__name__)

# 3 (issue 18): the graph's posting rows are int32 and its fresh values' Bloom positions read one
# shared zero row; a version-2 graph would pass int64 posting rows to ops that now refuse them.
FORMAT_VERSION = 3
_META = "silverrec.json"
PROGRAMS = ("model", "item_tower")

Programs = Dict[str, torch.export.ExportedProgram]


def version_stamp(programs: Programs, schema: Any = None) -> str:
    """sha256 (first 16 hex digits) over the schema and the names and bytes of every parameter,
    buffer and constant of every program."""
    h = hashlib.sha256(json.dumps(schema, sort_keys=True).encode())
    for prog_name in sorted(programs):
        program = programs[prog_name]
        for name, t in sorted({**program.state_dict, **dict(program.constants)}.items()):
            if isinstance(t, Tensor):
                h.update(f"{prog_name}.{name}".encode())
                h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())  # no copy of the bytes
    return h.hexdigest()[:16]


def save_artifact(programs: Programs, path: str, metadata: Dict[str, Any],
                  aoti: Optional[Tuple[Dict[str, List[Any]], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Writes the programs and metadata atomically (temporary file + rename); returns the metadata.

    Args:
        aoti: optional ``({program name: AOTInductor files}, info)`` from
            :func:`silverrec.serve.aoti.compile_aoti`; recorded as ``metadata["aoti"]``.
    """
    missing = set(PROGRAMS) - set(programs)
    if missing:
        raise ValueError(f"save_artifact: missing program(s) {sorted(missing)}")
    meta = {**metadata, "format_version": FORMAT_VERSION, "version": version_stamp(programs, metadata.get("schema"))}
    files = None
    if aoti is not None:
        files, info = aoti
        unknown = set(files) - set(programs)
        if unknown:
            raise ValueError(f"save_artifact: AOTInductor files for unknown program(s) {sorted(unknown)}")
        meta["aoti"] = {**info, "programs": sorted(files)}
    meta["integrity"] = {"algorithm": ALGORITHM, "manifest": MANIFEST}

    def write(tmp: str) -> None:
        package_pt2(tmp, exported_programs=dict(programs), aoti_files=files, extra_files={_META: json.dumps(meta)})
        write_manifest(tmp)

    write_atomically(path, write, ".pt2")
    return meta


class LoadedArtifact(NamedTuple):
    """An artifact read by :func:`open_artifact`: its programs, metadata and what the checksum
    verification checked (None: an export without checksums)."""

    programs: Programs
    metadata: Dict[str, Any]
    integrity: Optional[IntegrityReport]


def _missing_device(path: str, raw_meta: Optional[str]) -> Optional[str]:
    """Why this machine cannot read the export's weights, or None: a CUDA export's weights are
    CUDA tensors, so it needs CUDA to be read (said here, not as a torch error)."""
    try:
        device = json.loads(raw_meta).get("device", "cpu") if raw_meta else "cpu"
    except (ValueError, AttributeError):
        return None  # not silverrec metadata: reported by the caller
    if device == "cuda" and not torch.cuda.is_available():
        return (f"{path!r} was exported with CUDA tensors (silverrec-export device=cuda) and this machine has no CUDA; "
                "re-export it with device=cpu to serve it here")
    return None


# records at least this large are memory-mapped (smaller ones are read: a map costs a page at least)
MMAP_MIN_BYTES = 1 << 20


class _MappedRecords:
    """A ``PyTorchFileReader`` whose large tensor records come back as read-only (copy-on-write)
    memory maps of the archive file rather than heap copies (PT2 archives store tensor records
    uncompressed and 64-byte aligned, so a record is a plain byte range of the file)."""

    def __init__(self, reader: Any, path: str) -> None:
        self._reader = reader
        self._path = path
        self.mapped_bytes = 0

    def get_storage_from_record(self, name: str, numel: int, dtype: torch.dtype) -> Tensor:
        nbytes = numel * torch._utils._element_size(dtype)
        if nbytes < MMAP_MIN_BYTES:
            return self._reader.get_storage_from_record(name, numel, dtype)
        offset = self._reader.get_record_offset(name)
        raw = np.memmap(self._path, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))
        self.mapped_bytes += nbytes
        return torch.from_numpy(raw).view(dtype)  # the tensor keeps the map alive

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def load_artifact(path: str) -> Tuple[Programs, Dict[str, Any]]:
    """Loads a silverrec ``.pt2``: ``({"model": ..., "item_tower": ...}, metadata)``; raises
    ``FileNotFoundError`` / ``ValueError`` naming the problem (an
    :class:`~silverrec.serve.integrity.IntegrityError` naming the entry for a checksum mismatch)."""
    loaded = open_artifact(path)
    return loaded.programs, loaded.metadata


def open_artifact(path: str, mmap: bool = True) -> LoadedArtifact:
    """:func:`load_artifact`, also returning the checksum verification's report (entries, bytes,
    seconds) for the caller's load log line. ``mmap``: map the tensor records of at least
    :data:`MMAP_MIN_BYTES` read-only from the file (default) instead of reading them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model {path!r} does not exist")
    try:
        integrity = verify_manifest(path)  # before torch reads a byte of it
    except IntegrityError as err:
        raise IntegrityError(f"refusing to load a corrupted export: {err}; re-export it or copy it again") from err
    try:  # the programs and extra files only: an AOTInductor library is loaded on demand
        with PT2ArchiveReader(path) as reader:
            if mmap:
                reader.archive_file = _MappedRecords(reader.archive_file, path)
            names = reader.get_file_names()
            extra_files = _load_extra_files(reader, names)
            no_device = _missing_device(path, extra_files.get(_META))
            exported_programs = {} if no_device else _load_exported_programs(reader, names, None)
    except Exception as err:
        raise ValueError(f"{path!r} is not a readable torch.export file (truncated or corrupted?): {type(err).__name__}: {err}") from err
    if no_device:
        raise ValueError(no_device)
    raw = extra_files.get(_META)
    if not raw:
        raise ValueError(f"{path!r} is a torch.export file but not a silverrec export (no {_META})")
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has silverrec format version {meta.get('format_version')}, this silverrec reads {FORMAT_VERSION}; re-export it"
        )
    programs = dict(exported_programs)
    missing = set(PROGRAMS) - set(programs)
    if missing:
        raise ValueError(f"{path!r} lacks the program(s) {sorted(missing)}; re-export it")
    if integrity is None:
        if "integrity" in meta:
            raise IntegrityError(f"refusing to load a corrupted export: {path!r}: its metadata records a checksum "
                                 f"manifest but the entry {MANIFEST!r} is missing; re-export it or copy it again")
        log.warning("%s: exported without checksums, its integrity is not verified (re-export to record them)", path)
    else:
        log.info("%s: %s", path, integrity.describe())
    return LoadedArtifact(programs, meta, integrity)
