"""Checksums of an exported artifact's archive entries, recorded at export and verified at load.

A ``.pt2`` file is a zip archive whose entries are stored uncompressed (weights, index tensors,
program JSON, the metadata and, optionally, the AOTInductor shared library). ``torch`` reads the
tensor payloads without checking the zip CRCs, so a flipped byte in a weight or in the compiled
library would load and serve silently. At export, :func:`write_manifest` appends one more entry,
the manifest ``<archive>/extra/silverrec_checksums.json``::

    {"algorithm": "sha256", "entries": {"<entry name without the archive prefix>": [size, "hex digest"], ...}}

covering every other entry. At load, :func:`verify_manifest` hashes each entry's stored bytes once
(read straight from the file at the offset its local header gives; no decompression, no CRC pass)
and raises :class:`IntegrityError` naming the first entry whose bytes, size or header differ, and
naming entries missing from the archive or from the manifest. The manifest itself is checked by
parsing it; the metadata (``silverrec.json``, an entry like any other) records that the artifact
has one, so a file whose manifest was lost is refused too (:mod:`silverrec.serve.artifact`).

Example::

    >>> import os, tempfile, zipfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.zip")
    >>> with zipfile.ZipFile(path, "w") as z:
    ...     z.writestr("a/weights", b"0123456789")
    >>> write_manifest(path)
    >>> verify_manifest(path).entries
    1
    >>> with open(path, "r+b") as fh:
    ...     _ = fh.seek(40); _ = fh.write(b"X")  # inside the payload of a/weights
    >>> verify_manifest(path)
    Traceback (most recent call last):
    ...
    silverrec.serve.integrity.IntegrityError: ...: entry 'weights' is corrupted: its sha256 differs from the one recorded at export (10 bytes)
"""
import hashlib
import json
import os
import struct
import time
import zipfile
from typing import BinaryIO, Dict, List, NamedTuple, Optional, Tuple

MANIFEST = "extra/silverrec_checksums.json"
ALGORITHM = "sha256"
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header (30 bytes)
_LOCAL_MAGIC = b"PK\x03\x04"


class IntegrityError(ValueError):
    """The artifact's bytes differ from those recorded at export (names the entry)."""


class IntegrityReport(NamedTuple):
    """What :func:`verify_manifest` checked: entries, their bytes, and the seconds it took."""

    entries: int
    bytes: int
    seconds: float

    def describe(self) -> str:
        return f"{ALGORITHM} of {self.entries} entries ({self.bytes / 2 ** 20:.1f} MiB) verified in {1e3 * self.seconds:.0f} ms"


def _split(name: str) -> Tuple[str, str]:
    prefix, _, rest = name.partition("/")
    return prefix, rest


def _payloads(path: str) -> Tuple[str, List[Tuple[str, int, int, int]]]:
    """The archive prefix and ``(name, data offset, size, compress type)`` of every entry."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    if not infos:
        raise IntegrityError(f"{path!r}: the archive has no entries")
    prefix = _split(infos[0].filename)[0]
    out = []
    with open(path, "rb") as fh:
        for info in infos:
            fh.seek(info.header_offset)
            raw = fh.read(_LOCAL_HEADER.size)
            name = _split(info.filename)[1] or info.filename
            if len(raw) < _LOCAL_HEADER.size:
                raise IntegrityError(f"{path!r}: entry {name!r}: its local header lies past the end of the file (truncated?)")
            fields = _LOCAL_HEADER.unpack(raw)
            if fields[0] != _LOCAL_MAGIC:
                raise IntegrityError(f"{path!r}: entry {name!r}: its local header is corrupted (bad signature)")
            name_len, extra_len = fields[9], fields[10]
            if fh.read(name_len) != info.filename.encode():
                raise IntegrityError(f"{path!r}: entry {name!r}: its local header is corrupted (name differs)")
            out.append((name, info.header_offset + _LOCAL_HEADER.size + name_len + extra_len, info.compress_size,
                        info.compress_type))
    return prefix, out


_CHUNK = 16 << 20  # bytes read per step when hashing an entry


def _digest(fh: BinaryIO, start: int, size: int) -> str:
    """The digest of ``size`` bytes at ``start``, read in 16 MiB steps through one buffer.

    Not through a mapping of the file: hashing a mapped multi-GiB artifact made every page of it
    resident in this process (file-backed RSS the size of the artifact at the export's peak, 7.5
    GiB at 10M items); reads leave the pages in the page cache only."""
    h = hashlib.new(ALGORITHM)
    buf = bytearray(min(_CHUNK, max(size, 1)))
    view = memoryview(buf)
    fh.seek(start)
    left = size
    while left > 0:
        got = fh.readinto(view[: min(left, len(buf))])
        if not got:
            break  # past the end of the file: the digest differs
        h.update(view[:got])
        left -= got
    return h.hexdigest()


def write_manifest(path: str) -> None:
    """Appends the checksum manifest of every entry to the zip archive ``path`` (at export, to
    the temporary file before its atomic rename)."""
    prefix, entries = _payloads(path)
    digests: Dict[str, List[object]] = {}
    with open(path, "rb") as fh:
        for name, start, n, _ in entries:
            if name == MANIFEST:
                raise ValueError(f"{path!r} already holds a checksum manifest")
            digests[name] = [n, _digest(fh, start, n)]
    body = json.dumps({"algorithm": ALGORITHM, "entries": digests}, sort_keys=True)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{prefix}/{MANIFEST}", body)


def verify_manifest(path: str) -> Optional[IntegrityReport]:
    """Checks every entry of ``path`` against its manifest; None when the archive has none (an
    export written before checksums were recorded). Raises :class:`IntegrityError` naming the
    entry on any difference."""
    t0 = time.perf_counter()
    try:
        prefix, entries = _payloads(path)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise IntegrityError(f"{path!r} is not a readable zip archive (truncated or corrupted?): {err}") from err
    where = {name: (start, n, ctype) for name, start, n, ctype in entries}
    if MANIFEST not in where:
        return None
    with open(path, "rb") as fh:
        file_size = os.fstat(fh.fileno()).st_size
        start, n, ctype = where[MANIFEST]
        try:
            fh.seek(start)
            raw = fh.read(n)
            if ctype != zipfile.ZIP_STORED:
                raw = zipfile.ZipFile(path).read(f"{prefix}/{MANIFEST}")
            manifest = json.loads(raw)
            recorded = manifest["entries"]
            algorithm = manifest["algorithm"]
        except (ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
            raise IntegrityError(f"{path!r}: the checksum manifest {MANIFEST!r} is corrupted: {err}") from err
        if algorithm != ALGORITHM or not isinstance(recorded, dict):
            raise IntegrityError(f"{path!r}: the checksum manifest {MANIFEST!r} is corrupted (algorithm {algorithm!r})")
        missing = sorted(set(recorded) - set(where))
        if missing:
            raise IntegrityError(f"{path!r}: entry {missing[0]!r} recorded at export is missing from the archive")
        extra = sorted(set(where) - set(recorded) - {MANIFEST})
        if extra:
            raise IntegrityError(f"{path!r}: entry {extra[0]!r} was not in the archive at export")
        total = 0
        for name, (size, digest) in recorded.items():
            start, n, _ = where[name]
            if n != size:
                raise IntegrityError(f"{path!r}: entry {name!r} is corrupted: {n} bytes, {size} at export")
            if start + n > file_size:
                raise IntegrityError(f"{path!r}: entry {name!r} runs past the end of the file (truncated?)")
            if _digest(fh, start, n) != digest:
                raise IntegrityError(f"{path!r}: entry {name!r} is corrupted: its {ALGORITHM} differs from the one "
                                     f"recorded at export ({n} bytes)")
            total += n
    return IntegrityReport(len(recorded), total, time.perf_counter() - t0)

