"""Artifact integrity (issue 16, part 3): the checksums recorded at export are verified at load,
and a copy with flipped bytes is refused with an error naming the entry."""
import os
import shutil
import zipfile

import pytest

from silverrec.serve import Retriever, load_artifact
from silverrec.serve.integrity import MANIFEST, IntegrityError, verify_manifest


def _entries(path):
    """(name without the archive prefix, payload offset, size) of every stored entry."""
    out = []
    with zipfile.ZipFile(path) as z, open(path, "rb") as fh:
        for info in z.infolist():
            fh.seek(info.header_offset + 26)
            name_len, extra_len = (int.from_bytes(fh.read(2), "little") for _ in range(2))
            out.append((info.filename.partition("/")[2], info.header_offset + 30 + name_len + extra_len, info.file_size))
    return out


def _flip(path, offset, n=1):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in old))


def test_clean_artifact_verifies_and_reports(model_path, caplog):
    report = verify_manifest(model_path)
    names = {name for name, _, _ in _entries(model_path)}
    assert report is not None and report.entries == len(names) - 1  # every entry but the manifest itself
    assert MANIFEST in names and "extra/silverrec.json" in names
    assert report.bytes > 0 and report.seconds < 5.0
    with caplog.at_level("INFO", logger="silverrec.serve.artifact"):
        r = Retriever(model_path)
    assert r.integrity is not None and r.integrity.entries == report.entries
    assert any("verified in" in m and "ms" in m for m in caplog.messages)


def test_random_bytes_in_a_copy_are_refused_naming_the_entry(model_path, tmp_path):
    """The reported case, scaled to the test artifact: 1 KB of random bytes in the middle of the
    largest payload (a weight or index tensor) -- Retriever refuses it, naming that entry."""
    name, start, size = max(_entries(model_path), key=lambda e: e[2])
    bad = tmp_path / "bad.pt2"
    shutil.copy(model_path, bad)
    with open(bad, "r+b") as fh:
        fh.seek(start + size // 2 - 512)
        fh.write(os.urandom(1024))
    with pytest.raises(IntegrityError, match=f"refusing to load a corrupted export: .*entry '{name}' is corrupted"):
        Retriever(str(bad))


def test_every_entry_is_covered(model_path, tmp_path):
    """One flipped byte in any entry's payload (metadata, program JSON, weights, constants) is
    refused, naming that entry; restoring the byte makes the file load again."""
    bad = tmp_path / "bad.pt2"
    shutil.copy(model_path, bad)
    for name, start, size in _entries(model_path):
        if name == MANIFEST or size == 0:
            continue
        _flip(bad, start + size // 2)
        with pytest.raises(IntegrityError, match=f"entry '{name}' is corrupted"):
            load_artifact(str(bad))
        _flip(bad, start + size // 2)  # back
    assert verify_manifest(str(bad)) is not None


def test_corrupted_headers_and_manifest_are_refused(model_path, tmp_path):
    entries = {name: (start, size) for name, start, size in _entries(model_path)}
    # a corrupted local header (a byte of the entry's name, stored before its payload)
    bad = tmp_path / "header.pt2"
    shutil.copy(model_path, bad)
    with zipfile.ZipFile(model_path) as z:
        header = next(i.header_offset for i in z.infolist() if i.filename.endswith("extra/silverrec.json"))
    _flip(bad, header + 30 + 2)
    with pytest.raises(IntegrityError, match="entry 'extra/silverrec.json': its local header is corrupted"):
        load_artifact(str(bad))
    # a corrupted manifest
    bad = tmp_path / "manifest.pt2"
    shutil.copy(model_path, bad)
    start, size = entries[MANIFEST]
    _flip(bad, start + 1)
    with pytest.raises(IntegrityError, match="checksum manifest .* is corrupted"):
        load_artifact(str(bad))
    # a lost manifest (its name changed in the local header and the central directory): the
    # metadata says the export has one, so the file is refused rather than loaded unverified
    bad = tmp_path / "lost.pt2"
    data = open(model_path, "rb").read()
    assert data.count(b"silverrec_checksums.json") == 3  # local header, central directory, metadata
    bad.write_bytes(data.replace(b"silverrec_checksums.json", b"silverrec_checksumz.json"))
    assert verify_manifest(str(bad)) is None
    with pytest.raises(IntegrityError, match="records a checksum manifest but the entry .* is missing"):
        load_artifact(str(bad))


def test_an_export_without_checksums_loads_with_a_warning(model_path, tmp_path, caplog):
    """Artifacts written before checksums were recorded still load (their metadata has no
    ``integrity`` record), with a warning that they are not verified."""
    old = tmp_path / "old.pt2"
    with zipfile.ZipFile(model_path) as src, zipfile.ZipFile(old, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(MANIFEST):
                continue
            if info.filename.endswith("extra/silverrec.json"):
                data = data.replace(b', "integrity": {"algorithm": "sha256", "manifest": "extra/silverrec_checksums.json"}', b"")
                assert b"integrity" not in data
            dst.writestr(info.filename, data)
    with caplog.at_level("WARNING", logger="silverrec.serve.artifact"):
        _, meta = load_artifact(str(old))
    assert "integrity" not in meta
    assert any("integrity is not verified" in m for m in caplog.messages)
