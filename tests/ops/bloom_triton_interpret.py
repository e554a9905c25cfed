"""Checks the Triton ``bloom_search`` launcher against the reference on CPU tensors (hypothesis).

Run by ``test_bloom_search.py`` in a subprocess with ``TRITON_INTERPRET=1`` (the variable must
be set before triton is imported, so it cannot share the pytest process), as
``python -m tests.ops.bloom_triton_interpret`` from the repository root. Sizes stay tiny: the
interpreter is slow. Exits non-zero on the first mismatch.
"""
import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("set TRITON_INTERPRET=1 before running this script")

import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.ops.bloom_cases import random_case  # noqa: E402
from tests.retrieval.bloom_strategies import FEATURES, expressions, item_tables  # noqa: E402
from silverrec.ops.reference import bloom_search_reference  # noqa: E402
from silverrec.ops.triton.bloom_search import bloom_search_cuda  # noqa: E402
from silverrec.retrieval import BloomIndex, unpack_mask  # noqa: E402

_CONFIGS = [dict(block_w=4, block_p=8, max_programs_per_query=2), dict(block_w=2, block_p=4, max_programs_per_query=1),
            dict(block_w=8, block_p=16, max_programs_per_query=8)]


@settings(deadline=None, max_examples=24, derandomize=True, database=None)
@given(seed=st.integers(0, 2**31 - 1), config=st.sampled_from(_CONFIGS))
def check_random_plans(seed: int, config: dict) -> None:
    args = random_case(seed, max_rows=400, max_batch=3)
    got, expected = bloom_search_cuda(*args, **config), bloom_search_reference(*args)
    assert torch.equal(got, expected), f"seed {seed}, {config}:\n{got}\n{expected}"


@settings(deadline=None, max_examples=10, derandomize=True, database=None)
@given(items=item_tables(max_items=200), exprs=st.lists(expressions(depth=2), min_size=1, max_size=3),
       dense_fraction=st.sampled_from([0.2, 2.0]), config=st.sampled_from(_CONFIGS))
def check_corpora_and_expressions(items, exprs, dense_fraction: float, config: dict) -> None:
    index = BloomIndex.build(items, num_hashes=2, bits_multiplier=2.0, features=FEATURES, dense_fraction=dense_fraction)
    texts = [t for _, t in exprs]
    plan = index.plan(texts)
    t = index.table
    args = (index.bits, plan.opcodes, plan.terms, plan.hashes, t.posting_offsets, t.posting_rows,
            torch.zeros(len(texts), 1, dtype=torch.int64), torch.tensor([0, len(items)]))
    got = bloom_search_cuda(*args, **config)
    assert torch.equal(got, bloom_search_reference(*args)), texts
    truth = index.matches(texts)
    assert not bool((truth & ~unpack_mask(got, len(items))).any()), f"missed a match: {texts}"


def main() -> None:
    check_random_plans()
    check_corpora_and_expressions()
    print("34 cases match")


if __name__ == "__main__":
    main()
