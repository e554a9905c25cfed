"""``Retriever``: the client of an exported serving graph (needs only ``silverrec`` installed).

    >>> r = Retriever("runs/demo/serving.pt2")                                        # doctest: +SKIP
    >>> r.query(users=[{"country": "us", "history": ["i000123"]}], filter="language:en", k=5)  # doctest: +SKIP
    [[('i004711', 0.0213, {'click': 0.05, 'like': 0.02, ...}), ...]]
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from silverrec.schema import HISTORY, user_key
from silverrec.serve.artifact import load_artifact
from silverrec.serve.requests import Filters, RequestEncoder

Result = Tuple[Any, float, Dict[str, float]]  # (external item id, value, {task: prediction})


class Retriever:
    """A loaded serving graph (``silverrec-export``) answering queries with external ids.

    Args:
        path (str): the ``.pt2`` file.

    Attributes:
        k (int): results per query the graph returns (``query`` may ask for fewer).
        tasks (List[str]): task names, the order of ``task_scores``' last dimension.
        version (str): the artifact's version stamp.
    """

    def __init__(self, path: str) -> None:
        program, self.metadata = load_artifact(path)
        if self.metadata.get("kind") != "retrieval_graph":
            raise ValueError(f"{path!r} is a silverrec export of kind {self.metadata.get('kind')!r}, not a serving graph")
        self.encoder = RequestEncoder(self.metadata)
        self.schema = self.encoder.schema
        self.k = int(self.metadata["k"])
        self.tasks: List[str] = list(self.metadata["tasks"])
        self.version = str(self.metadata["version"])
        self._module = program.module()
        features = {user_key(f.name): f.num_embeddings for f in self.schema.user_features}
        features[user_key(HISTORY)] = self.schema.num_items
        self._slot_vocab = torch.tensor([features[key] for key, n in self.encoder.slots for _ in range(n)], dtype=torch.int64)
        self._slot_names = [key for key, n in self.encoder.slots for _ in range(n)]

    def search(self, user_ids: Tensor, opcodes: Tensor, terms: Tensor, hashes: Tensor, exclude: Tensor
               ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The graph on encoded inputs (checked): ``ids [B, K]`` (item rows), ``value [B, K]``,
        ``task_scores [B, K, T]``, ``num_valid [B]``."""
        self._check(user_ids, exclude)
        with torch.no_grad():
            return self._module(user_ids, opcodes, terms, hashes, exclude)

    def query(
        self,
        users: Sequence[Mapping[str, Any]],
        filter: Filters = None,
        exclude: Optional[Sequence[Optional[Sequence[Any]]]] = None,
        k: Optional[int] = None,
    ) -> List[List[Result]]:
        """Top items for each user, best first.

        Args:
            users: per user ``{feature: value or [values], "history": [item ids]}`` (external values).
            filter: one expression for all users, one per user, or None.
            exclude: per user, external item ids never to return (e.g. already seen).
            k: results per user (at most the exported K; default K).

        Returns:
            List[List[Tuple[item_id, value, {task: prediction}]]]: per user, at most k results
            (fewer when fewer items pass the filter).
        """
        k = self.k if k is None else int(k)
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in [1, {self.k}] (the K this graph was exported with), got {k}")
        user_ids = self.encoder.users(users)
        b = user_ids.shape[0]
        opcodes, terms, hashes = self.encoder.filters(filter, b)
        ids, value, scores, num_valid = self.search(user_ids, opcodes, terms, hashes, self.encoder.exclude(exclude, b))
        vocab = self.schema.item_ids
        out: List[List[Result]] = []
        for i in range(b):
            n = min(k, int(num_valid[i]))
            out.append([
                (vocab[int(ids[i, j])], float(value[i, j]), {t: float(scores[i, j, c]) for c, t in enumerate(self.tasks)})
                for j in range(n)
            ])
        return out

    def _check(self, user_ids: Tensor, exclude: Tensor) -> None:
        s = self._slot_vocab.numel()
        if user_ids.dim() != 2 or user_ids.shape[1] != s or user_ids.dtype != torch.int64 or user_ids.shape[0] == 0:
            raise ValueError(f"user_ids must be int64 [B >= 1, {s}], got {user_ids.dtype} {tuple(user_ids.shape)}")
        bad = (user_ids < -1) | (user_ids >= self._slot_vocab)
        if bool(bad.any()):
            b, j = (int(x) for x in bad.nonzero()[0])
            raise ValueError(f"user {b}: feature {self._slot_names[j]!r} id {int(user_ids[b, j])} is outside "
                             f"[0, {int(self._slot_vocab[j])})")
        if exclude.dim() != 2 or exclude.shape[0] != user_ids.shape[0] or exclude.dtype != torch.int64 or exclude.shape[1] == 0:
            raise ValueError(f"exclude must be int64 [B, E >= 1] (-1 padding), got {exclude.dtype} {tuple(exclude.shape)}")
