"""OverArch: a learned (user, candidate) similarity that re-scores retrieved candidates per task.

Two kinds, chosen by :class:`OverArchConfig`:

- ``"mlp"``: an MLP over the pair features ``[u, v, u*v]`` shared by all tasks (ReLU hidden
  layers; the first one computed without building the concatenation, the others a TorchRec
  ``MLP``), then one linear logit per task.
- ``"mixture_of_logits"`` (MoL, after Zhai et al. 2023, "Revisiting Neural Retrieval on
  Accelerators"): P learned projections of u and of v give P component similarities
  (cosines of the projected pairs); per-task gating weights, a softmax over P computed by an MLP
  over ``[u, v, u*v]``, mix them into one logit per task (with a learned per-task scale and bias).

The user side is either one embedding per task ``u [B, T, D]`` (the multi-task user tower) or one
shared embedding ``u [B, D]``; the candidates ``v [B, K, D]`` are shared by all tasks. Works in
bf16/fp16 (the gating softmax runs in float32).

With ``side_features`` (item attributes of :mod:`silverrec.models.side_features`), the first layer of the
MLP (the gating MLP for MoL) also reads F per-pair features ``x [B, K, F]`` computed from the
user's history item ids and the candidates' item ids through the item attribute table the
OverArch holds: ``relu(W_u u + W_v v + W_x (u*v) + W_s x + b)``. The call then needs ``history``
and ``items``.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.modules.mlp import MLP

from silverrec.models.side_features import AttributeSpec, SideFeatures, num_side_features

KINDS = ("mlp", "mixture_of_logits")


@dataclass
class OverArchConfig:
    """Configuration of :class:`OverArch`.

    Args:
        kind (str): ``"mlp"`` or ``"mixture_of_logits"``.
        hidden (List[int]): hidden layer sizes of the MLP over ``[u, v, u*v]`` (the scorer for
            ``"mlp"``, the gating network for ``"mixture_of_logits"``).
        num_tasks (int): T, one logit per task.
        num_mixtures (int): P, MoL components (``"mixture_of_logits"`` only).
        mixture_dim (int): dimension of each MoL component's projections of u and v.
        side_features (List[str]): item attributes (or ``popularity``, or ``all``) whose
            (history, candidate) side features the first layer also reads
            (:func:`silverrec.models.side_features.side_feature_specs` resolves them against the
            schema when the model is built; empty: none).
        num_items (int): N, the item id space of the side features' attribute table (set from
            the schema; only used with ``side_features``).
    """

    kind: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [64, 32])
    num_tasks: int = 1
    num_mixtures: int = 4
    mixture_dim: int = 16
    side_features: List[str] = field(default_factory=list)
    num_items: int = 0

    def __post_init__(self) -> None:
        self.side_features = [str(x) for x in self.side_features]
        if len(set(self.side_features)) != len(self.side_features):
            raise ValueError(f"model.over_arch.side_features lists an attribute twice: {self.side_features}")
        if self.num_items < 0:
            raise ValueError(f"OverArchConfig.num_items must be >= 0, got {self.num_items}")
        if self.kind not in KINDS:
            raise ValueError(f"OverArchConfig.kind must be one of {KINDS}, got {self.kind!r}")
        self.hidden = list(self.hidden)
        if not self.hidden or any(int(h) != h or h < 1 for h in self.hidden):
            raise ValueError(f"OverArchConfig.hidden must be a non-empty list of positive ints, got {self.hidden}")
        for name in ("num_tasks", "num_mixtures", "mixture_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"OverArchConfig.{name} must be >= 1, got {getattr(self, name)}")


class _PairMLP(nn.Module):
    """MLP over ``[u, v, u*v]`` that never materialises the concatenation: the first layer
    ``W [u; v; u*v] = W_u u + W_v v + W_x (u*v)`` computes ``W_u u`` once per user slot and
    ``W_v v`` once per candidate, and the cross term as one batched matmul
    ``W_x (u*v) = v (W_x * u)^T`` (no ``[B, K, S, D]`` product tensor: at serving sizes,
    16 users x 400 candidates x 4 task slots, that tensor and its pass through a Linear cost more
    than the matmul); later layers are a TorchRec ``MLP``.

    u [B, S, D] x v [B, K, D] (x side features [B, K, F]) -> [B, K, S, H] (H = hidden[-1]).
    """

    def __init__(self, embedding_dim: int, hidden: List[int], num_side: int = 0) -> None:
        super().__init__()
        self.user = nn.Linear(embedding_dim, hidden[0])
        self.item = nn.Linear(embedding_dim, hidden[0], bias=False)
        self.cross = nn.Linear(embedding_dim, hidden[0], bias=False)
        with torch.no_grad():  # the init of one Linear over the 3D-wide concatenation
            for layer in (self.user, self.item, self.cross):
                layer.weight.mul_(3 ** -0.5)
            self.user.bias.mul_(3 ** -0.5)
        self.side = nn.Linear(num_side, hidden[0], bias=False) if num_side else None
        self.rest = MLP(hidden[0], hidden[1:], bias=True) if len(hidden) > 1 else nn.Identity()

    def forward(self, u: Tensor, v: Tensor, x: Optional[Tensor] = None) -> Tensor:
        b, slots, d = u.shape
        h = self.cross.weight.shape[0]
        scaled = (u.unsqueeze(2) * self.cross.weight).reshape(b, slots * h, d)  # W_x * u_s: [B, S*H, D]
        cross = torch.bmm(v, scaled.transpose(1, 2)).view(b, v.shape[1], slots, h)  # [B, K, S, H]
        first = self.user(u).unsqueeze(1) + self.item(v).unsqueeze(2) + cross
        if self.side is not None:
            first = first + self.side(x.to(first.dtype)).unsqueeze(2)
        return self.rest(torch.relu(first))


def _per_task(h: Tensor, weight: Tensor) -> Tensor:
    """Per-task linear maps of per-slot features: h [B, K, S, H] with S in {1, T}, weight [T, H, O]
    -> [B, K, T, O] (slot t uses task t's weights; a single slot is shared by all tasks)."""
    if h.shape[2] == 1:
        return torch.einsum("bkh,tho->bkto", h[:, :, 0], weight)
    return torch.einsum("bkth,tho->bkto", h, weight)


class _MlpScorer(nn.Module):
    def __init__(self, embedding_dim: int, config: OverArchConfig, num_features: int) -> None:
        super().__init__()
        self.mlp = _PairMLP(embedding_dim, config.hidden, num_features)
        self.head_weight = nn.Parameter(torch.empty(config.num_tasks, config.hidden[-1], 1))
        self.head_bias = nn.Parameter(torch.zeros(config.num_tasks))
        nn.init.normal_(self.head_weight, std=config.hidden[-1] ** -0.5)

    def forward(self, u: Tensor, v: Tensor, x: Optional[Tensor] = None) -> Tensor:
        h = self.mlp(u, v, x)  # [B, K, S, H]
        return _per_task(h, self.head_weight)[..., 0] + self.head_bias  # [B, K, T]


class _MixtureOfLogits(nn.Module):
    def __init__(self, embedding_dim: int, config: OverArchConfig, num_features: int) -> None:
        super().__init__()
        p, d = config.num_mixtures, config.mixture_dim
        self.num_mixtures, self.mixture_dim = p, d
        self.user_proj = nn.Linear(embedding_dim, p * d)
        self.item_proj = nn.Linear(embedding_dim, p * d)
        self.gate_mlp = _PairMLP(embedding_dim, config.hidden, num_features)
        self.gate_weight = nn.Parameter(torch.empty(config.num_tasks, config.hidden[-1], p))
        self.gate_bias = nn.Parameter(torch.zeros(config.num_tasks, p))
        nn.init.normal_(self.gate_weight, std=config.hidden[-1] ** -0.5)
        # component logits are cosines in [-1, 1]; a per-task scale (and bias) makes them logits
        self.scale = nn.Parameter(torch.full((config.num_tasks,), 5.0))
        self.bias = nn.Parameter(torch.zeros(config.num_tasks))

    def forward(self, u: Tensor, v: Tensor, x: Optional[Tensor] = None) -> Tensor:
        b, s, _ = u.shape
        k = v.shape[1]
        fu = F.normalize(self.user_proj(u).view(b, s, self.num_mixtures, self.mixture_dim), dim=-1)
        gv = F.normalize(self.item_proj(v).view(b, k, self.num_mixtures, self.mixture_dim), dim=-1)
        components = torch.einsum("bspd,bkpd->bksp", fu, gv)  # [B, K, S, P]
        gate_logits = _per_task(self.gate_mlp(u, v, x), self.gate_weight) + self.gate_bias
        gates = torch.softmax(gate_logits.float(), dim=-1).to(components.dtype)  # [B, K, T, P]
        return (gates * components).sum(-1) * self.scale + self.bias  # [B, K, T]


class OverArch(nn.Module):
    """Learned per-task similarity of (user, candidate) pairs: an MLP or a Mixture-of-Logits.

    Args:
        embedding_dim (int): D, the dimension of the user and item embeddings.
        config (OverArchConfig): kind, hidden sizes, number of tasks and of MoL components.
        side_specs (Sequence[AttributeSpec]): the attributes of ``config.side_features`` resolved
            against the schema (:func:`~silverrec.models.side_features.side_feature_specs`).

    Call Args:
        u (Tensor): user embeddings, one per task [B, T, D] or shared [B, D].
        v (Tensor): candidate embeddings [B, K, D].
        history (Optional[Tensor]): int64 [B, L] the users' history item ids (-1 padding); needed
            with side features, ignored otherwise.
        items (Optional[Tensor]): int64 [B, K] the candidates' item ids (-1 padding); likewise.

    Returns:
        Tensor: [B, K, T] logits, in the dtype of the inputs.

    Example::

        >>> arch = OverArch(8, OverArchConfig(kind="mixture_of_logits", hidden=[16], num_tasks=3))
        >>> arch(torch.randn(2, 3, 8), torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 3])
        >>> OverArch(8, OverArchConfig(kind="mlp", hidden=[16], num_tasks=3))(torch.randn(2, 8), torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 3])
    """

    def __init__(self, embedding_dim: int, config: OverArchConfig, side_specs: Sequence[AttributeSpec] = ()) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"OverArch.embedding_dim must be >= 1, got {embedding_dim}")
        if bool(config.side_features) != bool(side_specs):
            raise ValueError(f"OverArch: side_features {config.side_features} need their attribute specs "
                             "(silverrec.models.side_features.side_feature_specs(schema, names)), and specs need names")
        self.embedding_dim = embedding_dim
        self.num_tasks = config.num_tasks
        self.kind = config.kind
        num_features = num_side_features(side_specs)
        scorer = _MlpScorer if config.kind == "mlp" else _MixtureOfLogits
        self.scorer = scorer(embedding_dim, config, num_features)
        self.side_features: Optional[SideFeatures] = None
        if side_specs:
            if config.num_items < 1:
                raise ValueError(f"OverArchConfig.num_items must be >= 1 with side_features {config.side_features}, "
                                 f"got {config.num_items}")
            self.side_features = SideFeatures(side_specs, config.num_items)

    def forward(self, u: Tensor, v: Tensor, history: Optional[Tensor] = None, items: Optional[Tensor] = None) -> Tensor:
        d, t = self.embedding_dim, self.num_tasks
        if u.dim() not in (2, 3) or u.shape[-1] != d or (u.dim() == 3 and u.shape[1] not in (1, t)):
            raise ValueError(f"OverArch expects u [B, {t}, {d}] or [B, {d}], got {list(u.shape)}")
        if u.dim() == 2:
            u = u.unsqueeze(1)
        if v.dim() != 3 or v.shape[-1] != d:
            raise ValueError(f"OverArch expects v [B, K, {d}], got {list(v.shape)}")
        x = None
        if self.side_features is not None:
            if history is None or items is None:
                raise ValueError(f"this OverArch reads side features of {self.side_features.names}: pass history "
                                 f"[B, L] and items [B, K] item ids")
            if items.shape != v.shape[:2] or history.shape[0] != v.shape[0]:
                raise ValueError(f"OverArch: items {list(items.shape)} and history {list(history.shape)} must be "
                                 f"[{v.shape[0]}, {v.shape[1]}] and [{v.shape[0]}, L]")
            x = self.side_features(history, items)
        return self.scorer(u, v, x)
