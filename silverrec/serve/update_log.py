"""Durable item updates: a snapshot plus a write-ahead log (``silverrec-serve --updates PATH``).

On disk, for ``PATH``:

- ``PATH``, the **snapshot**: one JSON object, written atomically (temporary file, fsync,
  rename, folder fsync)::

      {"artifact_version": "<version stamp of the .pt2>", "seq": 12, "new_ids": ["new-1", ...],
       "upserts": {"item id": {"feature": ["value", ...]}}, "deleted": ["published item id", ...]}

  ``seq`` is the number of updates it folds in (the ``index_version`` they produced); a file
  without ``seq`` (written before the log existed) counts as 0. ``silverrec-export base=.. updates=PATH``
  folds snapshot + log into a new export (:mod:`silverrec.serve.compaction`).
- ``PATH.log``, the **log**: one line per acknowledged update, appended and fsynced before the
  update is applied or answered::

      <crc32 of the JSON, 8 hex digits> {"seq": 13, "op": "upsert", "items": [{"item_id": .., "attributes": {..}}]}
      <crc32> {"seq": 14, "op": "delete", "item_ids": ["i000017"]}

  Records carry consecutive ``seq`` numbers, the first one past the snapshot's (records at or
  below it, left by a compaction interrupted between its two steps, are skipped).

Start-up reads the snapshot (validated: a clear ``ValueError`` naming the file and field), then
replays the log. A last line that is incomplete (no newline) or fails its checksum is a record torn
by a crash before it was acknowledged: it is dropped with a warning and cut off the file. A bad
record before the last one is corruption, refused with its line number. Every
``compact_min_bytes`` (and at least the snapshot's size, so that compaction costs O(1) per update
amortised) the state is written as a new snapshot and the log starts again empty.

Example::

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "updates.json")
    >>> log = UpdateLog(path, "930becfbd45ed218")
    >>> state, seq = log.open(known=lambda x: x.startswith("i"), has_row=lambda x: x.startswith("i"))
    >>> seq, state["new_ids"]
    (0, [])
    >>> log.append({"seq": 1, "op": "upsert", "items": [{"item_id": "new-1", "attributes": {"language": ["en"]}}]})
    >>> log.append({"seq": 2, "op": "delete", "item_ids": ["i000017"]})
    >>> UpdateLog(path, "930becfbd45ed218").open(lambda x: x.startswith("i"), lambda x: x.startswith("i"))
    ({'new_ids': ['new-1'], 'upserts': {'new-1': {'language': ['en']}}, 'deleted': ['i000017']}, 2)
"""
import json
import logging
import os
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from silverrec.atomic_file import fsync_dir, write_atomically

log = logging.getLogger(__name__)

SNAPSHOT_KEYS = ("artifact_version", "seq", "new_ids", "upserts", "deleted")
Terms = Dict[str, List[str]]
IdTest = Callable[[str], bool]


def log_path(path: str) -> str:
    """The log file beside the snapshot ``path``."""
    return path + ".log"


# --- the state and its replay --------------------------------------------------------------------

class UpdateState:
    """The item-update state as plain data, with the same rules as
    :class:`~silverrec.serve.item_updates.ItemUpdates` (which adds the embeddings).

    Args:
        known (Callable[[str], bool]): whether an id is in the artifact's item vocabulary
            (upserting an unknown id gives it a new id).
        has_row (Callable[[str], bool]): whether an id has a row in the main index (deleting
            it adds a tombstone).
    """

    def __init__(self, known: IdTest, has_row: IdTest) -> None:
        self.known, self.has_row = known, has_row
        self.new_ids: List[str] = []
        self._new: Set[str] = set()
        self.upserts: Dict[str, Terms] = {}
        self.deleted: Set[str] = set()

    @classmethod
    def from_json(cls, state: Mapping[str, Any], known: IdTest, has_row: IdTest) -> "UpdateState":
        out = cls(known, has_row)
        out.new_ids = list(state["new_ids"])
        out._new = set(out.new_ids)
        out.upserts = {x: dict(a) for x, a in state["upserts"].items()}
        out.deleted = set(state["deleted"])
        return out

    def to_json(self) -> Dict[str, Any]:
        return {"new_ids": list(self.new_ids), "upserts": dict(self.upserts), "deleted": sorted(self.deleted)}

    def apply(self, record: Mapping[str, Any]) -> None:
        if record["op"] == "upsert":
            for item in record["items"]:
                ext = item["item_id"]
                if not self.known(ext) and ext not in self._new:
                    self.new_ids.append(ext)
                    self._new.add(ext)
                self.upserts[ext] = item["attributes"]
                self.deleted.discard(ext)
        else:
            for ext in record["item_ids"]:
                self.upserts.pop(ext, None)
                if self.has_row(ext):
                    self.deleted.add(ext)


# --- reading -------------------------------------------------------------------------------------

def read_snapshot(path: str) -> Dict[str, Any]:
    """Reads and checks a snapshot file; returns its keys (``seq`` 0 when absent), ids as str and
    attribute values as lists of str. Raises ``ValueError`` naming the file and the field."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"updates file {path!r} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"updates file {path!r} must hold a JSON object with keys {list(SNAPSHOT_KEYS)}, "
                         f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SNAPSHOT_KEYS))
    if unknown:
        raise ValueError(f"updates file {path!r}: unknown key(s) {unknown}; expected {list(SNAPSHOT_KEYS)}")
    if not isinstance(raw.get("artifact_version"), str):
        raise ValueError(f"updates file {path!r}: \"artifact_version\" must be the version stamp (a string) of the "
                         f"artifact the updates were made against, got {raw.get('artifact_version')!r:.80}")
    seq = raw.get("seq", 0)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError(f"updates file {path!r}: \"seq\" must be a non-negative integer, got {seq!r:.80}")
    out: Dict[str, Any] = {"artifact_version": raw["artifact_version"], "seq": seq}
    for key in ("new_ids", "deleted"):
        ids = raw.get(key, [])
        if not isinstance(ids, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in ids):
            raise ValueError(f"updates file {path!r}: {key!r} must be a list of item ids, got {ids!r:.200}")
        out[key] = [str(x) for x in ids]
        if len(set(out[key])) != len(out[key]):
            raise ValueError(f"updates file {path!r}: {key!r} lists an item id twice")
    upserts = raw.get("upserts", {})
    if not isinstance(upserts, dict):
        raise ValueError(f"updates file {path!r}: \"upserts\" must be an object of item id -> attributes, "
                         f"got {type(upserts).__name__}")
    out["upserts"] = {}
    for item, attrs in upserts.items():
        out["upserts"][str(item)] = _attributes(attrs, f"updates file {path!r}: upserts[{item!r}]")
    both = sorted(set(out["upserts"]) & set(out["deleted"]))
    if both:
        raise ValueError(f"updates file {path!r}: item(s) {both[:5]} are both upserted and deleted")
    return out


def _attributes(attrs: Any, where: str) -> Terms:
    if not isinstance(attrs, dict):
        raise ValueError(f"{where} must be an object of feature -> values, got {attrs!r:.200}")
    clean: Terms = {}
    for feature, values in attrs.items():
        values = values if isinstance(values, list) else [values]
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{where}.{feature} must be a value or a list of values, got {attrs[feature]!r:.200}")
        clean[str(feature)] = [str(v) for v in values]
    return clean


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One log line: the crc32 of the JSON, a space, the JSON, a newline."""
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode_record(line: bytes, expected_seq: Optional[int], where: str) -> Dict[str, Any]:
    """Raises ``ValueError`` for a line that is not a valid record."""
    head, sep, body = line.partition(b" ")
    if not sep or len(head) != 8 or int(head, 16) != zlib.crc32(body):
        raise ValueError(f"{where}: checksum mismatch")
    rec = json.loads(body)
    if not isinstance(rec, dict) or rec.get("op") not in ("upsert", "delete"):
        raise ValueError(f"{where}: \"op\" must be \"upsert\" or \"delete\"")
    seq = rec.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or (expected_seq is not None and seq != expected_seq):
        raise ValueError(f"{where}: \"seq\" is {seq!r}, expected {expected_seq}")
    if rec["op"] == "upsert":
        items = rec.get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("item_id"), str) for i in items):
            raise ValueError(f"{where}: \"items\" must be a list of {{\"item_id\", \"attributes\"}} objects")
        rec["items"] = [{"item_id": i["item_id"], "attributes": _attributes(i.get("attributes", {}), where)} for i in items]
    elif not isinstance(rec.get("item_ids"), list) or not all(isinstance(x, str) for x in rec["item_ids"]):
        raise ValueError(f"{where}: \"item_ids\" must be a list of item ids (strings)")
    return rec


def read_log(path: str, after_seq: int, repair: bool) -> Tuple[List[Dict[str, Any]], int]:
    """The records of the log ``path`` with ``seq > after_seq`` and the byte length of its valid
    part. A torn last record is dropped with a warning (and cut off the file when ``repair``)."""
    if not os.path.isfile(path):
        return [], 0
    with open(path, "rb") as fh:
        data = fh.read()
    records: List[Dict[str, Any]] = []
    pos, line_no, expected = 0, 0, None
    while pos < len(data):
        end = data.find(b"\n", pos)
        line_no += 1
        last = end < 0 or end + 1 == len(data)
        line = data[pos:] if end < 0 else data[pos:end]
        where = f"updates log {path!r} line {line_no}"
        try:
            if end < 0:
                raise ValueError(f"{where}: incomplete (no newline)")
            rec = _decode_record(line, expected, where)
        except ValueError as err:
            if not last:
                raise ValueError(f"{err}; the log is corrupted before its last record (not a torn write): "
                                 f"restore it or remove it, losing the updates it holds") from None
            log.warning("%s; dropping it (a record torn by a crash before it was acknowledged)", err)
            if repair:
                with open(path, "r+b") as fh:
                    fh.truncate(pos)
                    os.fsync(fh.fileno())
            break
        expected = rec["seq"] + 1
        if rec["seq"] > after_seq:
            records.append(rec)
        pos = end + 1
    if records and records[0]["seq"] != after_seq + 1:
        raise ValueError(f"updates log {path!r}: its records start at seq {records[0]['seq']}, the snapshot holds "
                         f"{after_seq}: records are missing")
    return records, pos


def read_state(path: str, known: IdTest, has_row: IdTest) -> Tuple[Dict[str, Any], int]:
    """Snapshot + log of ``path`` replayed (read only): ``(snapshot dict with the replayed
    new_ids/upserts/deleted, seq)``."""
    snap = read_snapshot(path)
    records, _ = read_log(log_path(path), snap["seq"], repair=False)
    state = UpdateState.from_json(snap, known, has_row)
    for rec in records:
        state.apply(rec)
    seq = records[-1]["seq"] if records else snap["seq"]
    return {"artifact_version": snap["artifact_version"], **state.to_json()}, seq


# --- writing -------------------------------------------------------------------------------------

class UpdateLog:
    """The snapshot and log files of one ``--updates PATH``, appended to by one process.

    Args:
        path (str): the snapshot file (the log is ``path + ".log"``).
        artifact_version (str): the served artifact's version stamp (a snapshot of another
            artifact is refused).
        compact_min_bytes (int): the log size that triggers a compaction (also at least the
            last snapshot's size).
    """

    def __init__(self, path: str, artifact_version: str, compact_min_bytes: int = 4 << 20) -> None:
        self.path = path
        self.log_path = log_path(path)
        self.artifact_version = artifact_version
        self.compact_min_bytes = compact_min_bytes
        self._fd: Optional[int] = None
        self._size = 0  # bytes of valid, durable records in the log
        self._torn = False  # a failed append may have left bytes past _size
        self._snapshot_bytes = 0

    def open(self, known: IdTest, has_row: IdTest) -> Tuple[Dict[str, Any], int]:
        """Reads snapshot + log (dropping a torn last record), creates the snapshot if there is
        none, and opens the log for appending; returns ``(state, seq)``: the state as
        ``{"new_ids", "upserts", "deleted"}`` and the seq of its last update."""
        if os.path.isfile(self.path):
            snap = read_snapshot(self.path)
            if snap["artifact_version"] != self.artifact_version:
                raise ValueError(f"updates file {self.path!r} holds updates of artifact version {snap['artifact_version']}, "
                                 f"the served artifact is version {self.artifact_version}; fold them into a new export "
                                 f"(silverrec-export ... base=<that artifact> updates={self.path}) or remove the file")
        elif os.path.isfile(self.log_path) and os.path.getsize(self.log_path) > 0:
            raise ValueError(f"updates log {self.log_path!r} exists without its snapshot {self.path!r}: "
                             f"restore the snapshot or remove the log")
        else:
            snap = {"artifact_version": self.artifact_version, "seq": 0, "new_ids": [], "upserts": {}, "deleted": []}
            self._write_snapshot(snap)
        records, self._size = read_log(self.log_path, snap["seq"], repair=True)
        state = UpdateState.from_json(snap, known, has_row)
        for rec in records:
            state.apply(rec)
        self._snapshot_bytes = os.path.getsize(self.path)
        new_log = not os.path.isfile(self.log_path)
        self._fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT, 0o666)
        if new_log:
            fsync_dir(os.path.dirname(os.path.abspath(self.log_path)))
        return state.to_json(), (records[-1]["seq"] if records else snap["seq"])

    def append(self, record: Mapping[str, Any]) -> None:
        """Writes one record and fsyncs it; raises ``OSError`` (e.g. ``ENOSPC``) when it is not
        durable, leaving the log as it was (the caller must then not apply the update)."""
        if self._fd is None:
            raise RuntimeError("UpdateLog.append before open")
        line = encode_record(record)
        if self._torn:  # bytes of a failed append: cut them first, or refuse
            os.ftruncate(self._fd, self._size)
            self._torn = False
        try:
            written = os.pwrite(self._fd, line, self._size)
            if written != len(line):
                raise OSError(28, f"short write to {self.log_path!r} ({written} of {len(line)} bytes)")
            os.fdatasync(self._fd)
        except OSError:
            self._torn = True
            try:
                os.ftruncate(self._fd, self._size)
                self._torn = False
            except OSError:
                pass
            raise
        self._size += len(line)

    def needs_compaction(self) -> bool:
        return self._size >= max(self.compact_min_bytes, self._snapshot_bytes)

    def compact(self, state: Mapping[str, Any], seq: int) -> None:
        """Writes ``state`` (holding every update up to ``seq``) as the snapshot, then starts an
        empty log. A crash between the two leaves records that the snapshot already holds: the
        next start skips them by their seq."""
        self._write_snapshot({"artifact_version": self.artifact_version, "seq": seq, **state})
        self._snapshot_bytes = os.path.getsize(self.path)
        write_atomically(self.log_path, lambda tmp: open(tmp, "wb").close(), ".log")
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.log_path, os.O_WRONLY)
        self._size, self._torn = 0, False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write_snapshot(self, snap: Mapping[str, Any]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(snap, fh, ensure_ascii=False, separators=(",", ":"))

        write_atomically(self.path, write, ".json")
