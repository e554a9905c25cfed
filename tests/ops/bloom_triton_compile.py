"""Compiles the Triton ``bloom_search`` kernel ahead of time for sm_90 (PTX and cubin), no GPU needed.

The interpreter (``TRITON_INTERPRET=1``) runs the kernel as Python and misses errors of the real
compiler (types of loop-carried values, scalar branches); this catches them on a CPU-only machine.
Run by ``test_bloom_search.py`` in a subprocess without ``TRITON_INTERPRET``.
"""
import inspect
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET to compile the kernel")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from silverrec.ops import reference as R  # noqa: E402
from silverrec.ops.triton.bloom_search import _bloom_search_kernel  # noqa: E402


def main() -> None:
    names = list(inspect.signature(_bloom_search_kernel.fn).parameters)
    consts = dict(BLOCK_W=64, BLOCK_P=64, SEARCH_STEPS=24, OP_TERM=R.BLOOM_TERM, OP_NOT_TERM=R.BLOOM_NOT_TERM,
                  OP_AND=R.BLOOM_AND, OP_OR=R.BLOOM_OR, OP_FALSE=R.BLOOM_FALSE, OP_TRUE=R.BLOOM_TRUE,
                  OP_NOT_ROWS=R.BLOOM_NOT_ROWS)
    signature = {n: "constexpr" if n in consts else "*i64" if n.endswith("_ptr") else "i32" for n in names}
    source = ASTSource(fn=_bloom_search_kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    assert kernel.asm["ptx"] and kernel.asm["cubin"]
    print(f"compiled for sm_90: {len(kernel.asm['ptx'].splitlines())} lines of PTX")


if __name__ == "__main__":
    main()
