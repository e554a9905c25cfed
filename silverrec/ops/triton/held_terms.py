"""CUDA implementation of ``torch.ops.silverrec.held_terms``: the reference's torch operations.

A fixed number of binary-search steps over ``[B, M, L]`` tensors (from the posting array's
length, a static shape), so no host sync; on a GPU each step is one elementwise pass, which is
what a dedicated kernel would do too. Spec: ``silverrec.ops.reference.held_terms_reference``.
"""
from torch import Tensor

from silverrec.ops.reference.filter import held_terms_reference


def held_terms_cuda(bits: Tensor, term_rows: Tensor, posting_offsets: Tensor, posting_rows: Tensor, rows: Tensor,
                    terms: Tensor, num_rows: int) -> Tensor:
    """Launcher: int64 ``[B, M, L]`` (see ``held_terms_reference``)."""
    return held_terms_reference(bits, term_rows, posting_offsets, posting_rows, rows, terms, num_rows)
