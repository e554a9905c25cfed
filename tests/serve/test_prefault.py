"""``prefault``: the page tables of a memory-mapped tensor are populated at load, and a
``Retriever`` that prefaults its index answers as one that does not."""
import logging
import platform

import numpy as np
import pytest
import torch

from silverrec.serve import Retriever
from silverrec.serve.prefault import prefault


def _rss_file() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = [int(p) for p in platform.release().split("-")[0].split(".")[:2]]
    except ValueError:
        return False
    return tuple(parts) >= (major, minor)


@pytest.mark.skipif(not _kernel_at_least(5, 14), reason="MADV_POPULATE_READ needs Linux 5.14+")
def test_a_mapped_tensor_is_resident_after_prefault(tmp_path) -> None:
    path = tmp_path / "records.bin"
    nbytes = 32 << 20
    path.write_bytes(np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8).tobytes())
    mapped = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(nbytes,)))
    before = _rss_file()
    advised, seconds = prefault([mapped, torch.zeros(0)])
    after = _rss_file()
    assert advised == nbytes and seconds >= 0.0
    assert after - before >= 0.9 * nbytes, (before, after)  # mapped without a single read by the caller
    assert int(mapped[::4096].sum()) == int(np.fromfile(path, dtype=np.uint8)[::4096].astype(np.int64).sum())


def test_retriever_with_and_without_prefault_answer_alike(model_path, users, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="silverrec.serve.retriever"):
        warm = Retriever(model_path)
    assert any("of index pages" in r.getMessage() for r in caplog.records)
    cold = Retriever(model_path, prefault=False)
    for filter_ in ("", "language:en"):
        assert warm.query(users[:6], filter=filter_, k=10) == cold.query(users[:6], filter=filter_, k=10)
