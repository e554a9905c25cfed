"""The Value Model's formula language: tokenizer, recursive-descent parser and constant folding.

A formula combines per-task predictions into one value per candidate, e.g.
``0.6*like + 0.3*share + 0.1*watch``. Grammar (lowest precedence first)::

    formula    := comparison END
    comparison := additive [('<' | '<=' | '>' | '>=' | '==' | '!=') additive]   (not chained)
    additive   := term (('+' | '-') term)*
    term       := unary (('*' | '/') unary)*
    unary      := ('-' | '+') unary | power
    power      := primary ['**' unary]                                         (right-assoc.)
    primary    := NUMBER | TASK | FUNCTION '(' comparison (',' comparison)* ')' | '(' comparison ')'

so ``-x**2`` is ``-(x**2)`` and ``2**3**2`` is ``2**(3**2)``, as in Python. Numbers: ``3``,
``0.5``, ``.5``, ``1e-3``. Functions: ``if(cond, a, b)``, ``min(a, b, ...)``, ``max(a, b, ...)``,
``clamp(x, lo, hi)``, ``pow(x, y)``, ``log(x)``, ``exp(x)``, ``sigmoid(x)``.

Every operation is total, so serving never raises and never produces NaN (the semantics that
:class:`~silverrec.models.value_model.ValueModel` compiles, and that :func:`evaluate_constant`
uses to fold constant sub-expressions):

- comparisons give 1.0 (true) or 0.0 (false); ``if(c, a, b)`` is ``a`` where ``c != 0``, else ``b``;
- ``a / b`` is 0 where ``b == 0`` (guarded division);
- ``log(x)`` is ``log(max(x, 1e-12))``; ``exp(x)`` is ``exp(min(x, 80))`` (finite in float32);
- ``pow(x, y)`` (``x**y``) is 0 where it is undefined: ``x == 0`` with ``y < 0``, or ``x < 0`` with a
  fractional ``y``;
- ``clamp(x, lo, hi)`` is ``min(max(x, lo), hi)``.

Where the same undefined case is *constant* (``like/0``, ``like/(1-1)``, ``log(0)``, ``pow(0, -1)``,
``pow(-8, 1/3)``, ``clamp(x, 2, 1)``, a constant that overflows), the formula is rejected at load
time with :class:`FormulaError`, which names the column (1-based) of the offending token.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

LOG_EPS = 1e-12
EXP_MAX = 80.0
MAX_DEPTH = 100  # operations on one path from the root
MAX_NESTING = 50  # parentheses, calls and unary signs around one operand (bounds recursion)
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
# name -> (min args, max args or None for any)
FUNCTIONS: Dict[str, Tuple[int, Optional[int]]] = {
    "clamp": (3, 3), "exp": (1, 1), "if": (3, 3), "log": (1, 1),
    "max": (2, None), "min": (2, None), "pow": (2, 2), "sigmoid": (1, 1),
}


class FormulaError(ValueError):
    """A formula that cannot be loaded: bad syntax, unknown name, wrong arity, constant error.

    Args:
        message (str): what is wrong, without the position.
        column (int): 1-based column of the offending token.
        formula (str): the whole formula.
        hint (str): appended after the column, e.g. the list of known tasks.
    """

    def __init__(self, message: str, column: int, formula: str, hint: str = "") -> None:
        super().__init__(f"{message} at column {column}{' ' + hint if hint else ''} in formula {formula!r}")
        self.column = column
        self.formula = formula


@dataclass(frozen=True)
class Num:
    value: float
    column: int


@dataclass(frozen=True)
class Task:
    name: str
    index: int
    column: int


@dataclass(frozen=True)
class Unary:
    op: str  # "-"
    child: "Node"
    column: int


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / ** or a comparison
    left: "Node"
    right: "Node"
    column: int  # of the operator


@dataclass(frozen=True)
class Call:
    name: str
    args: Tuple["Node", ...]
    column: int  # of the function name


Node = Union[Num, Task, Unary, Binary, Call]


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "name", "op", "end"
    text: str
    column: int


_OPERATORS = ("**", "<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "(", ")", ",")


def _tokenize(text: str) -> List[_Token]:
    tokens: List[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch.isascii() and (ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit())):
            j = i
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            if j < n and text[j] == ".":
                j += 1
                while j < n and text[j].isascii() and text[j].isdigit():
                    j += 1
            if j < n and text[j] in "eE":
                k = j + 1
                if k < n and text[k] in "+-":
                    k += 1
                if k < n and text[k].isascii() and text[k].isdigit():
                    while k < n and text[k].isascii() and text[k].isdigit():
                        k += 1
                    j = k
            tokens.append(_Token("num", text[i:j], i + 1))
            i = j
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            j = i
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(_Token("name", text[i:j], i + 1))
            i = j
        else:
            op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
            if op is None:
                raise FormulaError(f"unexpected character {ch!r}", i + 1, text)
            tokens.append(_Token("op", op, i + 1))
            i += len(op)
    tokens.append(_Token("end", "", n + 1))
    return tokens


def _describe(tok: _Token) -> str:
    return "end of formula" if tok.kind == "end" else repr(tok.text)


class _Parser:
    def __init__(self, text: str, task_names: Sequence[str]) -> None:
        self.text = text
        self.tasks = {name: i for i, name in enumerate(task_names)}
        self.task_list = ", ".join(task_names)
        self.tokens = _tokenize(text)
        self.pos = 0
        self.nesting = 0
        self.depths: Dict[int, int] = {}  # id(node) -> operations on its longest path

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def error(self, message: str, column: int, hint: str = "") -> FormulaError:
        return FormulaError(message, column, self.text, hint)

    def unexpected(self, tok: _Token, expected: str) -> FormulaError:
        return self.error(f"unexpected {_describe(tok)}", tok.column, f"(expected {expected})")

    def expect(self, op: str) -> _Token:
        tok = self.take()
        if tok.kind != "op" or tok.text != op:
            raise self.unexpected(tok, repr(op))
        return tok

    def checked(self, node: Node) -> Node:
        depth = 1 + max((self.depths.get(id(c), 0) for c in _children(node)), default=0)
        if depth > MAX_DEPTH:
            raise self.error(f"formula too deep (more than {MAX_DEPTH} nested operations)", node.column)
        self.depths[id(node)] = depth
        return node

    def enter(self, tok: _Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self.error(f"formula nested too deeply (more than {MAX_NESTING} levels)", tok.column)

    def formula(self) -> Node:
        node = self.comparison()
        tok = self.peek()
        if tok.kind != "end":
            raise self.unexpected(tok, "an operator or end of formula")
        return node

    def comparison(self) -> Node:
        left = self.additive()
        tok = self.peek()
        if tok.kind == "op" and tok.text in COMPARISONS:
            self.take()
            node = self.checked(Binary(tok.text, left, self.additive(), tok.column))
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text in COMPARISONS:
                raise self.error("comparisons cannot be chained", nxt.column, "(use parentheses)")
            return node
        return left

    def additive(self) -> Node:
        node = self.term()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            tok = self.take()
            node = self.checked(Binary(tok.text, node, self.term(), tok.column))
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/"):
            tok = self.take()
            node = self.checked(Binary(tok.text, node, self.unary(), tok.column))
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("-", "+"):
            self.take()
            self.enter(tok)
            child = self.unary()
            self.nesting -= 1
            return self.checked(Unary("-", child, tok.column)) if tok.text == "-" else child
        return self.power()

    def power(self) -> Node:
        base = self.primary()
        tok = self.peek()
        if tok.kind == "op" and tok.text == "**":
            self.take()
            self.enter(tok)
            exponent = self.unary()
            self.nesting -= 1
            return self.checked(Binary("**", base, exponent, tok.column))
        return base

    def nested(self, tok: _Token) -> Node:
        self.enter(tok)
        node = self.comparison()
        self.nesting -= 1
        return node

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            value = float(tok.text)
            if not math.isfinite(value):
                raise self.error(f"number {tok.text} is out of range", tok.column)
            return Num(value, tok.column)
        if tok.kind == "op" and tok.text == "(":
            node = self.nested(tok)
            self.expect(")")
            return node
        if tok.kind == "name":
            is_call = self.peek().kind == "op" and self.peek().text == "("
            if is_call:
                return self.call(tok)
            if tok.text in self.tasks:
                return Task(tok.text, self.tasks[tok.text], tok.column)
            if tok.text in FUNCTIONS:
                raise self.error(f"function {tok.text!r} needs arguments", tok.column, f"(write {tok.text}(...))")
            raise self.error(f"unknown task {tok.text!r}", tok.column, f"(tasks: {self.task_list})")
        raise self.unexpected(tok, "a number, a task name, a function call or '('")

    def call(self, name: _Token) -> Node:
        if name.text not in FUNCTIONS:
            msg = f"{name.text!r} is a task, not a function" if name.text in self.tasks else f"unknown function {name.text!r}"
            raise self.error(msg, name.column, f"(functions: {', '.join(sorted(FUNCTIONS))})")
        self.expect("(")
        args = [self.nested(name)]
        while self.peek().kind == "op" and self.peek().text == ",":
            self.take()
            args.append(self.nested(name))
        self.expect(")")
        lo, hi = FUNCTIONS[name.text]
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}"
            raise self.error(f"{name.text}() takes {want} arguments, got {len(args)}", name.column)
        return self.checked(Call(name.text, tuple(args), name.column))


def _children(node: Node) -> Tuple[Node, ...]:
    if isinstance(node, Unary):
        return (node.child,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Call):
        return node.args
    return ()


# ---- total semantics on Python floats (used for constant folding) --------------------------

def _pow(x: float, y: float) -> float:
    if (x == 0 and y < 0) or (x < 0 and y != math.floor(y)):
        return 0.0
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf


_BINARY: Dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: 0.0 if b == 0 else a / b, "**": _pow,
    "<": lambda a, b: float(a < b), "<=": lambda a, b: float(a <= b), ">": lambda a, b: float(a > b),
    ">=": lambda a, b: float(a >= b), "==": lambda a, b: float(a == b), "!=": lambda a, b: float(a != b),
}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


_CALLS: Dict[str, Callable[..., float]] = {
    "if": lambda c, a, b: a if c != 0 else b,
    "min": lambda *a: min(a), "max": lambda *a: max(a),
    "clamp": lambda x, lo, hi: min(max(x, lo), hi), "pow": _pow,
    "log": lambda x: math.log(max(x, LOG_EPS)), "exp": lambda x: math.exp(min(x, EXP_MAX)),
    "sigmoid": _sigmoid,
}


def evaluate_constant(node: Node) -> float:
    """Value of a task-free node under the formula semantics (no load-time checks)."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Task):
        raise TypeError(f"task {node.name!r} is not constant")
    if isinstance(node, Unary):
        return -evaluate_constant(node.child)
    if isinstance(node, Binary):
        return _BINARY[node.op](evaluate_constant(node.left), evaluate_constant(node.right))
    return _CALLS[node.name](*(evaluate_constant(a) for a in node.args))


def _fold(node: Node, text: str) -> Node:
    """Folds constant sub-expressions and rejects undefined constant operations."""
    kids = tuple(_fold(c, text) for c in _children(node))
    consts = [k.value if isinstance(k, Num) else None for k in kids]

    def fail(message: str) -> FormulaError:
        return FormulaError(message, node.column, text)

    if isinstance(node, Binary):
        a, b = consts
        if node.op == "/" and b == 0:
            raise fail("division by zero")
        if node.op == "**":
            _check_pow(a, b, fail)
        node = Binary(node.op, kids[0], kids[1], node.column)
    elif isinstance(node, Call):
        if node.name == "pow":
            _check_pow(consts[0], consts[1], fail)
        if node.name == "log" and consts[0] is not None and consts[0] <= 0:
            raise fail(f"log of a non-positive constant ({consts[0]:g})")
        if node.name == "clamp" and consts[1] is not None and consts[2] is not None and consts[1] > consts[2]:
            raise fail(f"clamp bounds are reversed (lo={consts[1]:g} > hi={consts[2]:g})")
        if node.name == "if" and consts[0] is not None:  # constant condition: keep one branch
            return kids[1] if consts[0] != 0 else kids[2]
        node = Call(node.name, kids, node.column)
    elif isinstance(node, Unary):
        node = Unary(node.op, kids[0], node.column)
    if kids and all(c is not None for c in consts):
        value = evaluate_constant(node)
        if not math.isfinite(value):
            raise fail("constant sub-expression overflows")
        return Num(value, node.column)
    return node


def _check_pow(x: Optional[float], y: Optional[float], fail: Callable[[str], FormulaError]) -> None:
    if x is not None and y is not None:
        if x == 0 and y < 0:
            raise fail("division by zero (0 raised to a negative power)")
        if x < 0 and y != math.floor(y):
            raise fail("negative number raised to a fractional power")


def default_value_formula(task_names: Sequence[str]) -> str:
    """The Value Model formula used when none is configured: ``like`` when the data has a like
    task (the engagement most data sets label), else the first task.

    Args:
        task_names (Sequence[str]): the schema's task names, in task order.

    Returns:
        str: a formula naming only those tasks.

    Example::

        >>> default_value_formula(["click", "like"]), default_value_formula(["click", "purchase"])
        ('like', 'click')
    """
    if not task_names:
        raise ValueError("default_value_formula: the data set declares no tasks")
    return "like" if "like" in task_names else str(task_names[0])


def parse_formula(text: str, task_names: Sequence[str]) -> Node:
    """Parses a formula and folds its constant sub-expressions.

    Args:
        text (str): the formula, e.g. ``"0.6*like + 0.3*share"``.
        task_names (Sequence[str]): the task names a formula may use, in task order.

    Returns:
        Node: the folded syntax tree (``Num``, ``Task``, ``Unary``, ``Binary``, ``Call``).

    Raises:
        FormulaError: bad syntax, unknown task or function, wrong arity, or an undefined
            constant operation, naming the column.

    Example::

        >>> parse_formula("2*3 + like", ["like"])
        Binary(op='+', left=Num(value=6.0, column=2), right=Task(name='like', index=0, column=7), column=5)
        >>> parse_formula("0.5*lik", ["click", "like"])
        Traceback (most recent call last):
        ...
        silverrec.models.value_formula.FormulaError: unknown task 'lik' at column 5 (tasks: click, like) in formula '0.5*lik'
    """
    if not isinstance(text, str):
        raise TypeError(f"a formula must be a str, got {type(text).__name__}")
    return _fold(_Parser(text, task_names).formula(), text)
