"""Optimizers: a fused sparse optimizer for the embedding tables, a dense one for the rest.

The sparse optimizer is applied in the backward pass (``apply_optimizer_in_backward``), which
DistributedModelParallel turns into FBGEMM's fused table-batched kernels (every table is
planned on the fused kernel, see ``trainer.sharding_plan``); the dense optimizer (any
``torch.optim`` class, given as a partial) updates the MLPs and the temperature.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Type

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

SPARSE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}


@dataclass
class SparseOptimizerConfig:
    """The fused optimizer of the embedding tables (YAML ``optim.sparse``).

    Args:
        name (str): one of ``rowwise_adagrad`` (default; one accumulator per row), ``adagrad``,
            ``sgd``, ``adam``.
        lr (float): learning rate.
        eps (float): numerical epsilon (adagrad/adam family).
    """

    name: str = "rowwise_adagrad"
    lr: float = 0.05
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in SPARSE_OPTIMIZERS:
            raise ValueError(f"optim.sparse.name={self.name!r} is not one of {sorted(SPARSE_OPTIMIZERS)}")
        if not self.lr > 0:
            raise ValueError(f"optim.sparse.lr must be > 0, got {self.lr}")


def apply_sparse_optimizer(tables: Iterable[nn.Parameter], config: SparseOptimizerConfig) -> None:
    """Marks the embedding tables to be optimised in backward (before DMP wraps the model)."""
    kwargs = {"lr": config.lr}
    if config.name != "sgd":
        kwargs["eps"] = config.eps
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[config.name], tables, kwargs)


# words in torch.optim's "Invalid ..." messages -> the argument (YAML key) they are about
_TORCH_ARGUMENTS = (("learning rate", "lr"), ("beta", "betas"), ("epsilon", "eps"), ("weight_decay", "weight_decay"),
                    ("momentum", "momentum"), ("lr_decay", "lr_decay"), ("rho", "rho"), ("nesterov", "nesterov"),
                    ("dampening", "dampening"))


def check_dense_optimizer(dense: Callable[..., torch.optim.Optimizer], key: str = "optim.dense"
                          ) -> Callable[..., torch.optim.Optimizer]:
    """``dense`` if it builds an optimizer, else a ``ValueError`` naming the config key and value.

    torch checks its arguments only when the optimizer is built (deep inside the trainer) and
    names neither the key nor where it came from ("Invalid learning rate: -0.01"); this builds
    it once on a throwaway parameter, before any data is read.

    Args:
        dense (Callable): a partial ``torch.optim`` class (YAML ``optim.dense``).
        key (str): the config key of ``dense``, for the message.

    Returns:
        Callable: ``dense``, unchanged.

    Example::

        >>> import functools
        >>> check_dense_optimizer(functools.partial(torch.optim.Adam, lr=-0.01))
        Traceback (most recent call last):
        ...
        ValueError: optim.dense.lr=-0.01 is invalid: torch.optim.Adam says "Invalid learning rate: -0.01"
    """
    try:
        dense([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        target = getattr(dense, "func", dense)
        short = getattr(target, "__name__", "")
        name = f"torch.optim.{short}" if getattr(torch.optim, short, None) is target else \
            f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
        kwargs = getattr(dense, "keywords", {}) or {}
        text = str(err)
        arg = next((a for words, a in _TORCH_ARGUMENTS if words in text.lower() and a in kwargs), None)
        where = f"{key}.{arg}={kwargs[arg]!r}" if arg else key
        raise ValueError(f'{where} is invalid: {name} says "{text}"') from None
    return dense


def combined_optimizer(model: nn.Module, dense: Callable[..., torch.optim.Optimizer]) -> CombinedOptimizer:
    """The model's fused optimizer (from DMP) combined with ``dense`` over every other parameter.

    Args:
        model (nn.Module): a DistributedModelParallel model.
        dense (Callable): a partial ``torch.optim`` class, e.g. ``functools.partial(Adam, lr=1e-3)``.
    """
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    dense_opt = KeyedOptimizerWrapper(dense_params, lambda params: dense(params))
    return CombinedOptimizer([model.fused_optimizer, dense_opt])
