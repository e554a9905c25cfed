"""Checks the Triton ``bloom_search`` launcher against the reference on CPU tensors.

Run by ``test_bloom_search.py`` in a subprocess with ``TRITON_INTERPRET=1`` (the variable must
be set before triton is imported, so it cannot share the pytest process). Sizes stay tiny: the
interpreter is slow. Exits non-zero on the first mismatch.
"""
import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("set TRITON_INTERPRET=1 before running this script")

import torch  # noqa: E402

from bloom_cases import random_case  # noqa: E402
from silverrec.ops.reference import bloom_search_reference  # noqa: E402
from silverrec.ops.triton.bloom_search import bloom_search_cuda  # noqa: E402


def main() -> None:
    configs = [dict(block_w=4, block_p=8, max_programs_per_query=2), dict(block_w=2, block_p=4, max_programs_per_query=1),
               dict(block_w=8, block_p=16, max_programs_per_query=8)]
    count = 0
    for seed in range(24):
        args = random_case(seed, max_rows=400, max_batch=3)
        expected = bloom_search_reference(*args)
        got = bloom_search_cuda(*args, **configs[seed % len(configs)])
        if not torch.equal(got, expected):
            print(f"mismatch for seed {seed}:\n{got}\n{expected}")
            sys.exit(1)
        count += 1
    print(f"{count} cases match")


if __name__ == "__main__":
    main()
