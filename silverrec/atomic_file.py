"""Atomic file writes: a temporary file in the target's folder, fsynced, then renamed over it.

Checkpoints, exported models, reports and data caches all go through :func:`write_atomically`,
so a killed process leaves either the old file or the new one, never a truncated one.
"""
import os
import tempfile
from typing import Callable, Union


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
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
