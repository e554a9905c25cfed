"""Term identity for the filter: ``(feature, value)`` pairs <-> contiguous term ids, and their hashes.

A *term* is one attribute value of an item, e.g. ``("category", "music")``. Values are compared
as strings (``creator: 123`` and ``creator: "123"`` are the same term). The dictionary is built
from the item attribute table at publish time; a filter value never seen there resolves to
term id ``-1`` (a term that matches nothing), while an unknown *feature* is an error.

Example::

    >>> from silverrec.retrieval.term_dictionary import TermDictionary
    >>> d, offsets, terms = TermDictionary.from_item_terms([{"lang": ["en"]}, {"lang": ["de"], "tags": [7]}])
    >>> d.features, d.term_id("tags", "7"), d.term_id("lang", "fr"), offsets.tolist(), terms.tolist()
    (('lang', 'tags'), 2, -1, [0, 1, 3], [0, 1, 2])
"""
import hashlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from silverrec.retrieval.filter_expr import FilterError

ItemTerms = Sequence[Mapping[str, Sequence[object]]]


class TermDictionary:
    """Maps ``(feature, value)`` to term ids ``0..T-1`` in order of first appearance.

    Args:
        features (Sequence[str]): feature names, in order (an integer ``i`` in a filter names
            ``features[i]``).
        terms (Sequence[Tuple[str, str]]): ``(feature, value)`` of term id ``0..T-1``.
    """

    def __init__(self, features: Sequence[str], terms: Sequence[Tuple[str, str]]) -> None:
        self.features: Tuple[str, ...] = tuple(features)
        self.terms: Tuple[Tuple[str, str], ...] = tuple(terms)
        self._ids: Dict[Tuple[str, str], int] = {t: i for i, t in enumerate(self.terms)}
        if len(self._ids) != len(self.terms):
            raise ValueError("TermDictionary.terms has duplicate (feature, value) pairs")
        unknown = {f for f, _ in self.terms} - set(self.features)
        if unknown:
            raise ValueError(f"TermDictionary.terms use features {sorted(unknown)} not in features")

    def __len__(self) -> int:
        return len(self.terms)

    @classmethod
    def from_item_terms(cls, item_terms: ItemTerms, features: Optional[Sequence[str]] = None
                        ) -> Tuple["TermDictionary", np.ndarray, np.ndarray]:
        """Builds the dictionary and the per-item term sets (CSR).

        Args:
            item_terms (Sequence[Mapping[str, Sequence]]): one ``{feature: [values]}`` per item.
            features (Optional[Sequence[str]]): the filterable features in order (e.g. the
                schema's); a feature no item holds is still known. None: the features of
                ``item_terms`` in order of first appearance.

        Returns:
            Tuple[TermDictionary, np.ndarray, np.ndarray]: the dictionary, int64 ``offsets [N+1]``
            and int64 ``term_ids [nnz]`` (item i holds ``term_ids[offsets[i]:offsets[i+1]]``,
            sorted and without duplicates).
        """
        if len(item_terms) == 0:
            raise ValueError("item_terms is empty: the filter index needs at least one item")
        declared = features is not None
        features = dict.fromkeys(features or ())
        ids: Dict[Tuple[str, str], int] = {}
        offsets = np.zeros(len(item_terms) + 1, dtype=np.int64)
        flat: List[int] = []
        for i, attrs in enumerate(item_terms):
            if not isinstance(attrs, Mapping):
                raise ValueError(f"item_terms[{i}] must be a mapping {{feature: [values]}}, got {type(attrs).__name__}")
            row = set()
            for feat, values in attrs.items():
                if not isinstance(feat, str) or not feat:
                    raise ValueError(f"item_terms[{i}] has a feature name {feat!r}; names must be non-empty str")
                if feat not in features:
                    if declared:
                        raise ValueError(f"item_terms[{i}] has feature {feat!r} not in features {list(features)}")
                    features[feat] = None
                if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                    raise ValueError(f"item_terms[{i}][{feat!r}] must be a list of values, got {values!r}")
                for v in values:
                    key = (feat, str(v))
                    tid = ids.get(key)
                    if tid is None:
                        tid = ids[key] = len(ids)
                    row.add(tid)
            flat.extend(sorted(row))
            offsets[i + 1] = len(flat)
        return cls(tuple(features), tuple(ids)), offsets, np.asarray(flat, dtype=np.int64)

    def feature_name(self, feature: str) -> str:
        """Resolves a feature named in a filter (a name, or its decimal position) to its name."""
        if feature in self.features:
            return feature
        if feature.isdigit():
            pos = int(feature)
            if pos < len(self.features):
                return self.features[pos]
            raise FilterError(f"feature id {pos} is out of range: the index has {len(self.features)} features {list(self.features)}")
        raise FilterError(f"unknown feature {feature!r} in filter; the index knows {list(self.features)}")

    def term_id(self, feature: str, value: str) -> int:
        """Term id of ``feature:value``; ``-1`` for a value never seen (matches nothing).

        Raises:
            FilterError: for a feature the index does not know.
        """
        return self._ids.get((self.feature_name(feature), str(value)), -1)

    def hash_positions(self, num_hashes: int, num_bits: int) -> np.ndarray:
        """Bloom bit positions of every term: int64 ``[T, H]`` in ``[0, num_bits)``.

        Position i is the i-th 64-bit word of BLAKE2b digests of the term (8 words per digest,
        digest j personalised with j) modulo ``num_bits``: independent positions, stable across
        processes and Python versions. (Double hashing ``h1 + i h2`` was measured to give up to 3x
        the theoretical false-positive rate at these small widths: few distinct position sets.)
        """
        return term_hash_positions(self.terms, num_hashes, num_bits)


def term_hash_positions(terms: Sequence[Tuple[str, str]], num_hashes: int, num_bits: int) -> np.ndarray:
    """Bloom bit positions of ``(feature, value)`` terms: int64 ``[len(terms), num_hashes]`` in
    ``[0, num_bits)`` (see :meth:`TermDictionary.hash_positions`; also used for the fresh values of
    :mod:`silverrec.retrieval.fresh_terms`)."""
    if num_hashes < 1 or num_bits < 1:
        raise ValueError(f"num_hashes and num_bits must be >= 1, got {num_hashes} and {num_bits}")
    n_digests = (num_hashes + 7) // 8
    data = b"".join(
        hashlib.blake2b(f"{f}\x1f{v}".encode(), digest_size=64, person=j.to_bytes(16, "little")).digest()
        for f, v in terms
        for j in range(n_digests)
    )
    words = np.frombuffer(data, dtype="<u8").reshape(len(terms), 8 * n_digests)[:, :num_hashes]
    return (words % np.uint64(num_bits)).astype(np.int64)
