"""mallopt through ctypes: accepted by glibc, refused arguments named."""
import platform

import pytest

from silverrec.train.malloc_tuning import keep_freed_memory
from silverrec.train.trainer import TrainerConfig


def test_keep_freed_memory():
    assert keep_freed_memory(0) is False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory(32) is True
    with pytest.raises(ValueError, match="malloc_keep_mib"):
        keep_freed_memory(-1)
    with pytest.raises(ValueError, match="malloc_keep_mib"):
        TrainerConfig(malloc_keep_mib=-1)
