import math
import operator
import random
from typing import List, Optional, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from silverrec.models.value_formula import FUNCTIONS, FormulaError, parse_formula
from silverrec.models.value_model import ValueModel

TASKS = ["click", "like", "share", "watch"]
COMPARE = ("<", "<=", ">", ">=", "==", "!=")

# ---- random expression trees (the test's own representation), printer and reference --------
# ("task", name) | ("num", v) | ("neg", a) | ("bin", op, a, b) | ("call", name, (args...))

_leaves = st.one_of(
    st.sampled_from(TASKS).map(lambda t: ("task", t)),
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 1e-3, 1e-05, 0.1]).map(lambda v: ("num", v)),
)


def _extend(c: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        c.map(lambda a: ("neg", a)),
        st.tuples(st.sampled_from(["+", "-", "*", "/", "**", *COMPARE]), c, c).map(lambda t: ("bin", *t)),
        st.tuples(st.sampled_from(["log", "exp", "sigmoid"]), c).map(lambda t: ("call", t[0], (t[1],))),
        st.tuples(st.sampled_from(["pow", "min", "max"]), c, c).map(lambda t: ("call", t[0], t[1:])),
        st.tuples(st.sampled_from(["clamp", "if"]), c, c, c).map(lambda t: ("call", t[0], t[1:])),
        st.tuples(st.sampled_from(["min", "max"]), st.lists(c, min_size=3, max_size=4)).map(
            lambda t: ("call", t[0], tuple(t[1]))
        ),
    )


trees = st.recursive(_leaves, _extend, max_leaves=12)

_LEVEL = {"+": 2, "-": 2, "*": 3, "/": 3, "**": 5, **{op: 1 for op in COMPARE}}


def _print(node: tuple, rnd: random.Random) -> Tuple[List[str], int]:
    """Tokens of a node with the parentheses its precedence needs (and some spare ones)."""
    kind = node[0]
    if kind == "task":
        toks, level = [node[1]], 6
    elif kind == "num":
        toks, level = [repr(node[1])], 6
    elif kind == "call":
        toks = [node[1], "("]
        for i, arg in enumerate(node[2]):
            toks += ([","] if i else []) + _print(arg, rnd)[0]
        toks, level = toks + [")"], 6
    elif kind == "neg":
        toks, level = ["-"] + _wrap(_print(node[1], rnd), 4), 4
    else:
        op, level = node[1], _LEVEL[node[1]]
        left_min, right_min = {1: (2, 2), 2: (2, 3), 3: (3, 4), 5: (6, 4)}[level]
        toks = _wrap(_print(node[2], rnd), left_min) + [op] + _wrap(_print(node[3], rnd), right_min)
    if rnd.random() < 0.15:
        toks, level = ["("] + toks + [")"], 6
    return toks, level


def _wrap(printed: Tuple[List[str], int], min_level: int) -> List[str]:
    toks, level = printed
    return toks if level >= min_level else ["("] + toks + [")"]


def to_text(node: tuple, rnd: random.Random) -> str:
    toks = _print(node, rnd)[0]
    return "".join(t + (" " * rnd.randint(0, 1)) for t in toks)


_COMPARE_FNS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


class LoadError(Exception):
    pass


def _pow(a: float, b: float) -> float:
    if (a == 0 and b < 0) or (a < 0 and b != math.floor(b)):
        return 0.0
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf


class Reference:
    """Plain-Python evaluation of one candidate; flags results near a discontinuity as fragile."""

    def __init__(self, scores: Optional[List[float]]) -> None:
        self.scores = scores  # None: constant evaluation (returns None for task-dependent nodes)
        self.fragile = False

    def near(self, a: float, b: float) -> bool:
        return abs(a - b) <= 1e-6 * (1 + abs(a) + abs(b))

    def ev(self, node: tuple) -> Optional[float]:
        kind = node[0]
        if kind == "task":
            return None if self.scores is None else self.scores[TASKS.index(node[1])]
        if kind == "num":
            return node[1]
        args = [self.ev(a) for a in ([node[1]] if kind == "neg" else node[2:] if kind == "bin" else node[2])]
        op = "neg" if kind == "neg" else node[1]
        if None in args:
            return None
        value = self.apply(op, args, node)
        if not math.isfinite(value) or abs(value) > 1e6:
            if self.scores is None and not math.isfinite(value):
                raise LoadError("overflow")
            self.fragile = True
        return value

    def apply(self, op: str, v: List[float], node: tuple) -> float:
        if op == "neg":
            return -v[0]
        if op in COMPARE:
            self.fragile |= self.near(v[0], v[1])
            return float(_COMPARE_FNS[op](v[0], v[1]))
        if op == "/":
            self.fragile |= abs(v[1]) < 1e-6
            return 0.0 if v[1] == 0 else v[0] / v[1]
        if op in ("**", "pow"):
            self.fragile |= (v[0] < 0 and abs(v[1] - round(v[1])) < 1e-6) or (abs(v[0]) < 1e-6 and v[1] < 0)
            return _pow(v[0], v[1])
        if op == "if":
            cond = node[2][0]
            self.fragile |= abs(v[0]) < 1e-6 and not (cond[0] == "bin" and cond[1] in COMPARE)
            return v[1] if v[0] != 0 else v[2]
        fns = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
               "min": lambda *a: min(a), "max": lambda *a: max(a), "clamp": lambda x, lo, hi: min(max(x, lo), hi),
               "log": lambda x: math.log(max(x, 1e-12)), "exp": lambda x: math.exp(min(x, 80.0)),
               "sigmoid": lambda x: 1 / (1 + math.exp(-x)) if x > -700 else 0.0}
        return fns[op](*v)


def load_error(node: tuple) -> bool:
    """Whether the formula must be rejected at load time (an undefined constant operation)."""
    kids = [] if node[0] in ("task", "num") else [node[1]] if node[0] == "neg" else list(node[2:] if node[0] == "bin" else node[2])
    if any(load_error(k) for k in kids):
        return True
    try:
        consts = [Reference(None).ev(k) for k in kids]
        Reference(None).ev(node)
    except LoadError:
        return True
    op = node[1] if node[0] in ("bin", "call") else None
    if op == "/" and consts[1] == 0:
        return True
    if op in ("**", "pow") and None not in consts:
        return (consts[0] == 0 and consts[1] < 0) or (consts[0] < 0 and consts[1] != math.floor(consts[1]))
    if op == "log" and consts[0] is not None and consts[0] <= 0:
        return True
    return op == "clamp" and None not in consts[1:] and consts[1] > consts[2]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(tree=trees, rnd=st.randoms(use_true_random=False))
def test_module_matches_the_reference_on_random_formulas(tree: tuple, rnd: random.Random) -> None:
    text = to_text(tree, rnd)
    if load_error(tree):
        with pytest.raises(FormulaError):
            ValueModel(text, TASKS)
        return
    vm = ValueModel(text, TASKS)
    gen = torch.Generator().manual_seed(rnd.randint(0, 2**31))
    scores = torch.rand(3, 8, len(TASKS), generator=gen, dtype=torch.float64) * 1.5 - 0.25
    got = vm(scores)
    assert got.shape == (3, 8) and got.dtype == torch.float64 and torch.isfinite(got).all()
    for b in range(3):
        for k in range(8):
            ref = Reference(scores[b, k].tolist())
            want = ref.ev(tree)
            if not ref.fragile:
                assert math.isclose(got[b, k].item(), want, rel_tol=1e-6, abs_tol=1e-6), (text, b, k, want)


@pytest.mark.parametrize(
    "text, want",
    [
        ("1 + 2*3", 7.0), ("(1 + 2)*3", 9.0), ("1 - 2 - 3", -4.0), ("8/4/2", 1.0), ("-2**2", -4.0),
        ("2**3**2", 512.0), ("2**-1", 0.5), ("pow(2, 10)", 1024.0), ("1e-3*1e3", 1.0), (".5 + 5.", 5.5),
        ("1 + 1 == 2", 1.0), ("1 < 2 == 1", None), ("if(0, 1, 2)", 2.0), ("min(3, 1, 2)", 1.0),
        ("max(3, 1, 2)", 3.0), ("clamp(5, 0, 1)", 1.0), ("log(1)", 0.0), ("exp(0)", 1.0), ("sigmoid(0)", 0.5),
        ("3 != 3", 0.0), ("-(-1)", 1.0), ("+1", 1.0), ("1--1", 2.0),
    ],
)
def test_precedence_and_functions_on_constants(text: str, want: Optional[float]) -> None:
    if want is None:
        with pytest.raises(FormulaError, match="cannot be chained at column 7"):
            ValueModel(text, TASKS)
        return
    out = ValueModel(text, TASKS)(torch.zeros(2, 3, 4))
    torch.testing.assert_close(out, torch.full((2, 3), want))


def test_guarded_operations_never_give_nan_or_inf() -> None:
    scores = torch.tensor([[[0.0, -1.0, 0.0, 1e30], [2.0, 0.0, 0.5, 1e30]]])
    cases = {
        "like / click": [0.0, 0.0],
        "log(like)": [math.log(1e-12)] * 2,
        "pow(like, 0.5)": [0.0, 0.0],
        "like ** -1": [-1.0, 0.0],
        "exp(watch)": [math.exp(80.0)] * 2,
        "watch * watch": [torch.finfo(torch.float32).max] * 2,
    }
    for text, want in cases.items():
        out = ValueModel(text, TASKS)(scores)
        torch.testing.assert_close(out, torch.tensor([want]), msg=text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("like + share) * 2 + watch + 0.1)", "unexpected ')' at column 13"),
        ("0.5 * (like + share))", "unexpected ')' at column 21"),
        ("0.6 * lik", "unknown task 'lik' at column 7 (tasks: click, like, share, watch)"),
        ("like + foo(1)", "unknown function 'foo' at column 8 (functions: clamp, exp, if, log, max, min, pow, sigmoid)"),
        ("like(2)", "'like' is a task, not a function at column 1"),
        ("1 + log", "function 'log' needs arguments at column 5"),
        ("min(like)", "min() takes at least 2 arguments, got 1 at column 1"),
        ("2*clamp(like, 1)", "clamp() takes 3 arguments, got 2 at column 3"),
        ("if(like, 1, 2, 3)", "if() takes 3 arguments, got 4 at column 1"),
        ("sigmoid()", "unexpected ')' at column 9"),
        ("like $ share", "unexpected character '$' at column 6"),
        ("like +", "unexpected end of formula at column 7"),
        ("", "unexpected end of formula at column 1"),
        ("like share", "unexpected 'share' at column 6"),
        ("(like", "unexpected end of formula at column 6 (expected ')')"),
        ("like < share < watch", "comparisons cannot be chained at column 14"),
        ("like/0", "division by zero at column 5"),
        ("like/(1-1)", "division by zero at column 5"),
        ("like + share/(2*0.5 - 1)", "division by zero at column 13"),
        ("pow(0, -1) + like", "division by zero (0 raised to a negative power) at column 1"),
        ("like + (-8)**(1/3)", "negative number raised to a fractional power at column 12"),
        ("log(1 - 1) * like", "log of a non-positive constant (0) at column 1"),
        ("clamp(like, 1, 0)", "clamp bounds are reversed (lo=1 > hi=0) at column 1"),
        ("like * 1e999", "number 1e999 is out of range at column 8"),
        ("like + pow(10, 400)", "constant sub-expression overflows at column 8"),
        ("like + " + "(" * 60 + "1" + ")" * 60, "nested too deeply"),
        ("+".join(["like"] * 120), "formula too deep"),
        ("like" + "**like" * 400, "nested too deeply"),
        ("-" * 400 + "like", "nested too deeply"),
        ("like" + "*min(like, 1)" * 200, "formula too deep"),
    ],
)
def test_load_time_errors_name_the_column(text: str, message: str) -> None:
    with pytest.raises(FormulaError) as info:
        ValueModel(text, TASKS)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
    assert 1 <= info.value.column <= len(text) + 1


def test_bad_task_names_and_shapes() -> None:
    with pytest.raises(ValueError, match="not an identifier"):
        ValueModel("1", ["like", "two words"])
    with pytest.raises(ValueError, match="also a function name"):
        ValueModel("1", ["log"])
    with pytest.raises(ValueError, match="duplicates"):
        ValueModel("1", ["like", "like"])
    with pytest.raises(TypeError):
        parse_formula(None, TASKS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task_scores \[B, K, 4\], got \[2, 3\]"):
        ValueModel("like", TASKS)(torch.zeros(2, 3))


_FUZZ_PIECES = list("0123456789.eE+-*/()<>=!, $_") + TASKS + sorted(FUNCTIONS) + ["**", "1e-3", "lik", "foo", " "]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(text=st.one_of(st.text(max_size=40), st.lists(st.sampled_from(_FUZZ_PIECES), max_size=30).map("".join)))
def test_fuzzed_text_parses_or_raises_formula_error(text: str) -> None:
    try:
        parse_formula(text, TASKS)
    except FormulaError as e:
        assert 1 <= e.column <= len(text) + 1


class _Scorer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value = ValueModel("if(click > 0.5, 0.6*like + 0.3*share/click, -1) + 0.1*log(watch) + max(like, 0.2)", TASKS)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.value(torch.sigmoid(logits))


def test_export_with_dynamic_batch() -> None:
    module = _Scorer()
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(module, (torch.randn(4, 6, 4),), dynamic_shapes=({0: batch},))
    for x in (torch.randn(9, 6, 4), torch.randn(1, 6, 4)):
        torch.testing.assert_close(exported.module()(x), module(x))
    candidates = torch.export.Dim("candidates", min=1, max=4096)
    exported = torch.export.export(module, (torch.randn(4, 6, 4),), dynamic_shapes=({0: batch, 1: candidates},))
    x = torch.randn(3, 11, 4)
    torch.testing.assert_close(exported.module()(x), module(x))


def test_compile_fullgraph_equals_eager() -> None:
    module = _Scorer()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 7, 4)
    torch.testing.assert_close(compiled(x), module(x))


def test_half_precision_scores_are_upcast() -> None:
    vm = ValueModel("0.6*like + 0.4*log(share)", TASKS)
    x = torch.rand(2, 5, 4)
    out = vm(x.to(torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, vm(x), atol=2e-2, rtol=1e-2)


def test_float32_agrees_with_float64() -> None:
    vm = ValueModel("0.6*like + 0.3*share/(click + 0.1) + 0.1*log(watch) - pow(like, 1.5) + sigmoid(3*click)", TASKS)
    x = torch.rand(4, 50, 4, dtype=torch.float64)
    out = vm(x.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), vm(x), rtol=1e-5, atol=1e-5)
