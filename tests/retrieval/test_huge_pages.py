"""silverrec.retrieval.huge_pages: copies of large tensors in memory advised MADV_HUGEPAGE."""
import gc
import io

import pytest
import torch

from silverrec.retrieval.huge_pages import HUGE_PAGE_BYTES, huge_pages_mode, on_huge_pages

needs_thp = pytest.mark.skipif(huge_pages_mode() not in ("madvise", "always"),
                               reason="no transparent huge pages on this machine")


@needs_thp
@pytest.mark.parametrize("dtype", [torch.int8, torch.float16, torch.int64, torch.bool])
def test_copy_is_aligned_equal_and_outlives_its_mapping_handles(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    t = (torch.randint(-100, 100, (3000, 37), generator=g)).to(dtype)
    out = on_huge_pages(t, min_bytes=0)
    assert out is not t and out.data_ptr() % HUGE_PAGE_BYTES == 0
    assert out.dtype == t.dtype and out.shape == t.shape and out.is_contiguous()
    assert torch.equal(out, t)
    assert out.untyped_storage().nbytes() == t.numel() * t.element_size()  # exactly its bytes
    gc.collect()  # only the tensor holds the mapping now
    out[0] = t[1]
    assert torch.equal(out[0], t[1]) and torch.equal(out[1:], t[1:])
    buf = io.BytesIO()
    torch.save({"x": out}, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf)["x"], out)


def test_small_or_non_cpu_tensors_stay_where_they_are() -> None:
    t = torch.arange(10)
    assert on_huge_pages(t) is t  # below MIN_BYTES
    big = torch.zeros(1 << 20)  # 4 MiB
    assert on_huge_pages(big, min_bytes=(4 << 20) + 1) is big


@needs_thp
def test_a_non_contiguous_tensor_is_copied_contiguous() -> None:
    t = torch.arange(4000 * 30, dtype=torch.float32).view(4000, 30).t()
    out = on_huge_pages(t, min_bytes=0)
    assert out.is_contiguous() and torch.equal(out, t)


@needs_thp
def test_build_places_the_randomly_read_buffers_on_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """IVFInt8Index.build copies codes, scales, cache and row_to_id onto huge pages (above
    MIN_BYTES; 0 here): same buffers and same search results as a build that keeps them."""
    import silverrec.retrieval.huge_pages as huge_pages
    from silverrec.retrieval.ivf_index import IVFInt8Index

    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(3000, 16, generator=g), torch.randn(8, 16, generator=g)
    monkeypatch.setattr(huge_pages, "MIN_BYTES", 1 << 62)
    plain = IVFInt8Index.build(x, num_clusters=30)
    monkeypatch.setattr(huge_pages, "MIN_BYTES", 0)
    huge = IVFInt8Index.build(x, num_clusters=30)
    for name in ("codes", "scales", "cache", "row_to_id"):
        assert getattr(huge, name).data_ptr() % HUGE_PAGE_BYTES == 0, name
        assert torch.equal(getattr(huge, name), getattr(plain, name)), name
    mask = torch.rand(8, 3000, generator=g) < 0.3
    for m in (None, mask):
        a, b = huge.search(q, 10, n_probe=3, mask=m), plain.search(q, 10, n_probe=3, mask=m)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
