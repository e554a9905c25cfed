"""Retrieval layers of the serving graph: filter language, Bloom index, IVF-INT8 index, exact search."""
# --- bloom (filter issue) ---

# --- ivf (ANN issue) ---
