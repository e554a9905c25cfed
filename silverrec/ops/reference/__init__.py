"""Plain-torch references of every ``torch.ops.silverrec`` op: the spec.

Each docstring fixes the contract (shapes, padding with id -1 / score -inf, tie-breaking by
lower id). Never registered as a kernel, never optimised, never deleted: every backend is
tested against these functions on random inputs. One module per op family:
:mod:`.filter` (``bloom_search``, ``exact_filter``, ``pack_id_mask`` and the filter-plan
opcodes) and :mod:`.ivf` (``quantize_int8_rowwise``, ``ivf_select_probes``, ``ivf_int8_topk``,
``ivf_rescore_topk``, ``ivf_search``, ``ivf_search_bloom``, ``ivf_probe_scores``); everything is importable from here.
"""
from silverrec.ops.reference.filter import (  # noqa: F401
    BLOOM_AND,
    BLOOM_FALSE,
    BLOOM_NOP,
    BLOOM_NOT_ROWS,
    BLOOM_NOT_TERM,
    BLOOM_NUM_OPCODES,
    BLOOM_OR,
    BLOOM_TERM,
    BLOOM_TRUE,
    bloom_search_reference,
    exact_filter_reference,
    held_terms_reference,
    pack_id_mask_reference,
    rows_to_words,
)
from silverrec.ops.reference.ivf import (  # noqa: F401
    ivf_int8_topk_reference,
    ivf_probe_scores_reference,
    ivf_rescore_topk_reference,
    ivf_search_bloom_reference,
    ivf_search_in_steps,
    ivf_search_reference,
    ivf_select_probes_reference,
    quantize_int8_rowwise_reference,
)
