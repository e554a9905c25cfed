"""write_atomically: normal permissions (the umask decides, not mkstemp's 0600) and a durable rename."""
import os

import pytest

from silverrec import atomic_file
from silverrec.atomic_file import current_umask, write_atomically


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_written_files_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        path = tmp_path / "report.json"
        write_atomically(path, lambda p: open(p, "w").write("{}"), ".json")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    assert path.read_text() == "{}" and sorted(os.listdir(tmp_path)) == ["report.json"]


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    calls = []
    replace, fsync_dir = os.replace, atomic_file.fsync_dir
    monkeypatch.setattr(atomic_file.os, "replace", lambda a, b: (calls.append("replace"), replace(a, b))[1])
    monkeypatch.setattr(atomic_file, "fsync_dir", lambda d: (calls.append(("fsync_dir", str(d))), fsync_dir(d))[1])
    write_atomically(tmp_path / "a.bin", lambda p: open(p, "wb").write(b"x"))
    assert calls == ["replace", ("fsync_dir", str(tmp_path))]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")

    def fail(p):
        open(p, "w").write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(path, fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]
