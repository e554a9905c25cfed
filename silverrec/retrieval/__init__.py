"""Retrieval layers of the serving graph: filter language, Bloom index, IVF-INT8 index."""
# --- bloom (filter issue) ---
from silverrec.retrieval.attribute_table import AttributeTable  # noqa: E402
from silverrec.retrieval.bloom_index import BloomIndex  # noqa: E402
from silverrec.retrieval.filter_expr import FilterError, FilterSyntaxError, parse  # noqa: E402
from silverrec.retrieval.filter_plan import FilterPlan, compile_plans  # noqa: E402
from silverrec.retrieval.term_dictionary import TermDictionary  # noqa: E402

# --- ivf (ANN issue) ---
from silverrec.retrieval.ivf_index import IVFInt8Index  # noqa: F401
from silverrec.retrieval.packed_mask import pack_mask, popcount, unpack_mask  # noqa: F401
from silverrec.retrieval.search_result import SearchResult  # noqa: F401
