"""The Value Model: one value per candidate from its per-task predictions, by a config formula.

The formula (language and semantics in :mod:`silverrec.models.value_formula`) is parsed and
constant-folded once, at construction, into a tree of small ``nn.Module`` nodes that evaluate it
with tensor operations over all candidates at once: fixed shapes, no host syncs, no ``eval``.
All load-time errors (syntax, unknown task, arity, constant division by zero) are raised by the
constructor; at serving every operation is total (guarded division, clamped log/exp) and the
result is finally made finite (NaN -> 0, +-inf -> the largest finite value), so serving never
raises and never returns NaN or inf.
"""
import re
from typing import List, Sequence, Union

import torch
from torch import Tensor, nn

from silverrec.models.value_formula import EXP_MAX, FUNCTIONS, LOG_EPS, Binary, Call, Node, Num, Task, Unary, parse_formula

Value = Union[Tensor, float]  # a node's value: [B, K] tensor, or a Python float for a constant

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _where(cond: Tensor, a: Value, b: Value, like: Tensor) -> Tensor:
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = torch.full_like(like, a)
    return torch.where(cond, a, b)


def _minimum(a: Value, b: Value) -> Value:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.minimum(a, b)
    if isinstance(a, Tensor):
        return a.clamp(max=b)
    if isinstance(b, Tensor):
        return b.clamp(max=a)
    return min(a, b)


def _maximum(a: Value, b: Value) -> Value:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.maximum(a, b)
    if isinstance(a, Tensor):
        return a.clamp(min=b)
    if isinstance(b, Tensor):
        return b.clamp(min=a)
    return max(a, b)


def _divide(a: Value, b: Value, like: Tensor) -> Tensor:
    if not isinstance(b, Tensor):  # a constant denominator is non-zero (checked at load time)
        return a / b
    zero = b == 0
    return _where(zero, 0.0, a / torch.where(zero, 1.0, b), like)


def _power(a: Value, b: Value, like: Tensor) -> Tensor:
    base = a if isinstance(a, Tensor) else torch.full_like(like, a)
    p = torch.pow(base, b)
    # undefined -> 0: negative base with a fractional exponent (NaN), 0 to a negative power
    undefined = torch.isnan(p)
    if isinstance(b, Tensor):
        undefined = undefined | ((base == 0) & (b < 0))
    elif b < 0:
        undefined = undefined | (base == 0)
    return torch.where(undefined, 0.0, p)


class _Leaf(nn.Module):
    def __init__(self, node: Union[Num, Task]) -> None:
        super().__init__()
        self.index = node.index if isinstance(node, Task) else -1
        self.value = node.value if isinstance(node, Num) else 0.0

    def forward(self, x: Tensor) -> Value:
        return x[..., self.index] if self.index >= 0 else self.value

    def extra_repr(self) -> str:
        return f"task={self.index}" if self.index >= 0 else f"value={self.value!r}"


class _Op(nn.Module):
    """One operation of the formula tree over its children's values."""

    def __init__(self, op: str, children: List[nn.Module]) -> None:
        super().__init__()
        self.op = op
        self.args = nn.ModuleList(children)

    def extra_repr(self) -> str:
        return f"op={self.op!r}"

    def forward(self, x: Tensor) -> Value:
        like = x[..., 0]
        v: List[Value] = [arg(x) for arg in self.args]
        op = self.op
        if op == "neg":
            return -v[0]
        if op == "+":
            return v[0] + v[1]
        if op == "-":
            return v[0] - v[1]
        if op == "*":
            return v[0] * v[1]
        if op == "/":
            return _divide(v[0], v[1], like)
        if op in ("**", "pow"):
            return _power(v[0], v[1], like)
        if op in ("<", "<=", ">", ">=", "==", "!="):
            a = v[0] if isinstance(v[0], Tensor) else torch.full_like(like, v[0])
            if op == "<":
                c = a < v[1]
            elif op == "<=":
                c = a <= v[1]
            elif op == ">":
                c = a > v[1]
            elif op == ">=":
                c = a >= v[1]
            elif op == "==":
                c = a == v[1]
            else:
                c = a != v[1]
            return c.to(like.dtype)
        if op == "if":
            cond = v[0] != 0 if isinstance(v[0], Tensor) else torch.full_like(like, v[0]) != 0
            return _where(cond, v[1], v[2], like)
        if op in ("min", "max", "clamp"):
            out = v[0]
            if op == "clamp":
                return _minimum(_maximum(out, v[1]), v[2])
            for w in v[1:]:
                out = _minimum(out, w) if op == "min" else _maximum(out, w)
            return out
        a = v[0] if isinstance(v[0], Tensor) else torch.full_like(like, v[0])
        if op == "log":
            return torch.log(a.clamp(min=LOG_EPS))
        if op == "exp":
            return torch.exp(a.clamp(max=EXP_MAX))
        if op == "sigmoid":
            return torch.sigmoid(a)
        raise AssertionError(f"unknown op {op!r}")


def _compile(node: Node) -> nn.Module:
    if isinstance(node, (Num, Task)):
        return _Leaf(node)
    if isinstance(node, Unary):
        return _Op("neg", [_compile(node.child)])
    if isinstance(node, Binary):
        return _Op(node.op, [_compile(node.left), _compile(node.right)])
    assert isinstance(node, Call)
    return _Op(node.name, [_compile(a) for a in node.args])


class ValueModel(nn.Module):
    """Evaluates a value formula over the task predictions of every candidate.

    The formula is parsed, constant-folded and compiled at construction; errors (syntax, unknown
    task or function, arity, constant division by zero, log of a non-positive constant) raise
    :class:`~silverrec.models.value_formula.FormulaError` (a ``ValueError``) with the column.
    Computation runs in the input dtype promoted to at least float32 (fp16/bf16 scores are
    upcast). Semantics of the guarded operations: see :mod:`silverrec.models.value_formula`.

    Args:
        formula (str): e.g. ``"0.6*like + 0.3*share + 0.1*watch"``.
        task_names (Sequence[str]): names of the T tasks, in the order of the last input dim.

    Call Args:
        task_scores (Tensor): [B, K, T] per-task predictions of K candidates per query.

    Returns:
        Tensor: [B, K] values (finite), dtype ``promote_types(task_scores.dtype, float32)``.

    Example::

        >>> vm = ValueModel("if(click > 0.5, 0.7*like + 0.3*share, 0)", ["click", "like", "share"])
        >>> scores = torch.tensor([[[0.9, 1.0, 0.0], [0.1, 1.0, 1.0]]])
        >>> vm(scores)
        tensor([[0.7000, 0.0000]])
        >>> ValueModel("like / (share - share)", ["like", "share"])(torch.ones(1, 1, 2))  # guarded
        tensor([[0.]])
    """

    def __init__(self, formula: str, task_names: Sequence[str]) -> None:
        super().__init__()
        names = list(task_names)
        if not names:
            raise ValueError("ValueModel.task_names is empty")
        for name in names:
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"ValueModel task name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
            if name in FUNCTIONS:
                raise ValueError(f"ValueModel task name {name!r} is also a function name; rename the task")
        if len(set(names)) != len(names):
            raise ValueError(f"ValueModel.task_names has duplicates: {names}")
        self.formula = formula
        self.task_names: List[str] = names
        self.tree: Node = parse_formula(formula, names)
        self.expression = _compile(self.tree)

    def extra_repr(self) -> str:
        return f"formula={self.formula!r}, task_names={self.task_names}"

    def forward(self, task_scores: Tensor) -> Tensor:
        if task_scores.dim() != 3 or task_scores.shape[-1] != len(self.task_names):
            raise ValueError(f"ValueModel expects task_scores [B, K, {len(self.task_names)}], got {list(task_scores.shape)}")
        x = task_scores.to(torch.promote_types(task_scores.dtype, torch.float32))
        out = self.expression(x)
        if not isinstance(out, Tensor):  # a constant formula
            out = torch.full_like(x[..., 0], out)
        finfo = torch.finfo(x.dtype)
        return torch.nan_to_num(out, nan=0.0, posinf=finfo.max, neginf=finfo.min)
