"""Atomic file writes: a temporary file in the target's folder, fsynced, then renamed over it.

Checkpoints, exported models, reports and data caches all go through :func:`write_atomically`,
so a killed process leaves either the old file or the new one, never a truncated one. The file
gets the permissions any new file of the process gets (``0o666`` minus the umask, not the
private ``0o600`` of a temporary file), and the folder is fsynced after the rename so that the
rename itself survives a power loss (:func:`fsync_dir`).
"""
import os
import tempfile
from typing import Callable, Union


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` where Linux gives it (setting the umask to
    read it races with other threads creating files), else set and put back."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Union[str, "os.PathLike[str]"]) -> None:
    """fsyncs a folder, making the creation, rename or removal of its entries durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Union[str, "os.PathLike[str]"], write: Callable[[str], None], suffix: str = "") -> None:
    """Calls ``write(tmp_path)`` and renames the result to ``path`` (folders are created).

    Args:
        path (str | PathLike): the destination.
        write (Callable[[str], None]): writes the complete content to the given path.
        suffix (str): suffix of the temporary file (some writers look at the extension).

    Example::

        >>> import json, os
        >>> d = tempfile.mkdtemp()
        >>> write_atomically(os.path.join(d, "a.json"), lambda p: open(p, "w").write("{}"), ".json")
        >>> sorted(os.listdir(d))
        ['a.json']
        >>> oct(os.stat(os.path.join(d, "a.json")).st_mode & 0o777) == oct(0o666 & ~current_umask())
        True
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 is for the temporary file only
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
