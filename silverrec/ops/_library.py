"""The ``torch.ops.silverrec`` library: every op schema, defined once, and idempotent registration.

Backends register through tables of the form ``{op_name: {dispatch_key: fn}}`` (as FBGEMM's
``op_registrations``): ``fake.FAKE_IMPLS`` (``"Meta"``, registered as the fake/abstract impl),
``triton.CUDA_IMPLS`` (``"CUDA"``, only when CUDA is available). The C++ CPU kernels register
themselves with ``TORCH_LIBRARY_IMPL(silverrec, CPU, m)`` when ``silverrec._C`` is imported.
The plain-torch references in ``reference/`` are the spec and are never registered.

Serving ops register no autograd formula: calling one on a tensor that requires grad raises.
"""
from typing import Callable, Dict, Mapping

import torch

NAMESPACE = "silverrec"

# One schema string per op. No defaults: every argument is explicit at every call site.
SCHEMAS: Dict[str, str] = {
    # --- bloom_search (filter issue) ---
    "bloom_search": (
        "bloom_search(Tensor bits, Tensor opcodes, Tensor terms, Tensor hashes, Tensor posting_offsets, "
        "Tensor posting_rows, Tensor probe, Tensor cluster_offsets) -> Tensor"
    ),
    # --- ivf_int8_topk (ANN issue) ---
    "ivf_int8_topk": (
        "ivf_int8_topk(Tensor q_codes, Tensor q_scales, Tensor codes, Tensor scales, "
        "Tensor cluster_offsets, Tensor probe, Tensor? mask, int k) -> (Tensor, Tensor, Tensor)"
    ),
    "ivf_select_probes": (
        "ivf_select_probes(Tensor centroid_scores, Tensor cluster_offsets, Tensor? mask, int n_probe, "
        "int min_rows, int max_probe, float coverage_exponent=0., int min_rows_floor=0) -> Tensor"
    ),
    "ivf_rescore_topk": (
        "ivf_rescore_topk(Tensor queries, Tensor cache, Tensor rows, Tensor row_to_id, int k) -> (Tensor, Tensor)"
    ),
    "quantize_int8_rowwise": "quantize_int8_rowwise(Tensor x) -> (Tensor, Tensor)",
    # --- exact_filter (the serving graph's exact check of its candidates) ---
    "exact_filter": "exact_filter(Tensor opcodes, Tensor terms, Tensor held) -> Tensor",
    "held_terms": (
        "held_terms(Tensor bits, Tensor term_rows, Tensor posting_offsets, Tensor posting_rows, Tensor rows, "
        "Tensor terms, int num_rows) -> Tensor"
    ),
    # --- pack_id_mask (a filter mask in the caller's id order -> packed row order) ---
    "pack_id_mask": "pack_id_mask(Tensor mask, Tensor row_to_id) -> Tensor",
    "ivf_search": (
        "ivf_search(Tensor queries, Tensor centroid_scores, Tensor codes, Tensor scales, Tensor cluster_offsets, "
        "Tensor cache, Tensor row_to_id, Tensor? mask, int n_probe, int min_rows, int max_probe, int k0, int k, "
        "float coverage_exponent=0.) -> (Tensor, Tensor, Tensor)"
    ),
    # --- ivf_probe_scores (bfloat16 centroid scores: the probe ranking's matmul) ---
    "ivf_probe_scores": "ivf_probe_scores(Tensor queries, Tensor packed, int num_clusters, float spread_weight) -> Tensor",
    # --- ivf_search_bloom (probe, then filter: the Bloom plan evaluated over the walked clusters) ---
    "ivf_search_bloom": (
        "ivf_search_bloom(Tensor queries, Tensor centroid_scores, Tensor codes, Tensor scales, "
        "Tensor cluster_offsets, Tensor cache, Tensor row_to_id, Tensor bits, Tensor opcodes, Tensor terms, "
        "Tensor hashes, Tensor posting_offsets, Tensor posting_rows, Tensor? deny, Tensor? exclude_rows, "
        "int n_probe, int min_rows, int max_probe, int k0, int k, float coverage_exponent=0.) -> (Tensor, Tensor, Tensor)"
    ),
}

_ALLOWED_KEYS = ("CPU", "CUDA", "Meta")
_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
_defined: set = set()
_registered: set = set()


def define_all() -> None:
    """Defines every schema in ``SCHEMAS`` that is not defined yet (safe to call twice)."""
    for name, schema in SCHEMAS.items():
        if name in _defined or _op_exists(name):
            _defined.add(name)
            continue
        _lib.define(schema)
        _defined.add(name)


def register(table: Mapping[str, Mapping[str, Callable]]) -> None:
    """Registers ``{op: {dispatch_key: fn}}``; ``"Meta"`` goes to ``register_fake``.

    Already registered (op, key) pairs are skipped, so importing twice is harmless.
    """
    for name, impls in table.items():
        if name not in SCHEMAS:
            raise ValueError(f"op {name!r} has no schema in silverrec.ops._library.SCHEMAS")
        for key, fn in impls.items():
            if key not in _ALLOWED_KEYS:
                raise ValueError(f"dispatch key {key!r} for op {name!r} is not one of {_ALLOWED_KEYS}")
            if (name, key) in _registered:
                continue
            qualname = f"{NAMESPACE}::{name}"
            if key == "Meta":
                torch.library.register_fake(qualname, fn, lib=_lib)
            else:
                _lib.impl(name, fn, key)
            _registered.add((name, key))


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"{NAMESPACE}::{name}", "")
        return True
    except RuntimeError:
        return False
