"""The filter language: lexer and recursive-descent parser from text to an AST.

Grammar (keywords ``AND``, ``OR``, ``NOT``, ``IN`` are case-insensitive; ``AND`` binds tighter
than ``OR``; ``NOT`` binds tightest)::

    filter   := <empty> | or_expr
    or_expr  := and_expr ("OR" and_expr)*
    and_expr := not_expr ("AND" not_expr)*
    not_expr := "NOT" not_expr | "(" or_expr ")" | term
    term     := feature ":" value | feature "IN" "(" value ("," value)* ")"
    feature  := word | integer           (an integer names a feature by its position)
    value    := word | integer | quoted  ("hip hop" or 'hip hop'; \\" and \\\\ escape)

A *word* is a run of characters other than white space, ``( ) , :`` and quotes, so values
such as ``en-US``, ``3.5`` or ``sci-fi/fantasy`` need no quotes; a keyword where a value is
expected is a value (``country:IN``). An empty (or blank) filter
parses to :class:`MatchAll`. Errors raise :class:`FilterSyntaxError` with a 1-based column.

Example::

    >>> from silverrec.retrieval.filter_expr import parse
    >>> parse('lang:en AND NOT creator:123')
    And(children=(Term(feature='lang', value='en', column=1), Not(child=Term(feature='creator', value='123', column=17))))
    >>> parse('category IN (music, pop)')
    Or(children=(Term(feature='category', value='music', column=1), Term(feature='category', value='pop', column=1)))
"""
from dataclasses import dataclass
from typing import List, Tuple, Union


class FilterError(ValueError):
    """A filter expression that cannot be evaluated (bad syntax, unknown feature)."""


class FilterSyntaxError(FilterError):
    """A malformed filter expression.

    Args:
        message (str): what is wrong.
        column (int): 1-based column of the offending character in the expression.
        text (str): the whole expression.
    """

    def __init__(self, message: str, column: int, text: str) -> None:
        super().__init__(f"{message} at column {column} in filter {text!r}")
        self.column = column
        self.text = text


@dataclass(frozen=True)
class Term:
    """``feature:value``; ``feature`` is a name or the decimal position of a feature."""

    feature: str
    value: str
    column: int


@dataclass(frozen=True)
class Not:
    child: "Node"


@dataclass(frozen=True)
class And:
    children: Tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    children: Tuple["Node", ...]


@dataclass(frozen=True)
class MatchAll:
    """The empty filter: every item matches."""


Node = Union[Term, Not, And, Or, MatchAll]

_KEYWORDS = ("AND", "OR", "NOT", "IN")
_PUNCT = "():,"
_QUOTES = "\"'"


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "quoted", one of _PUNCT, one of _KEYWORDS, or "end"
    text: str
    column: int


def _tokenize(text: str) -> List[_Token]:
    tokens: List[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _PUNCT:
            tokens.append(_Token(ch, ch, i + 1))
            i += 1
        elif ch in _QUOTES:
            start, i, chars = i, i + 1, []
            while True:
                if i >= n:
                    raise FilterSyntaxError(f"unterminated quoted value starting with {ch}", start + 1, text)
                c = text[i]
                if c == "\\" and i + 1 < n and text[i + 1] in (ch, "\\"):
                    chars.append(text[i + 1])
                    i += 2
                elif c == ch:
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            tokens.append(_Token("quoted", "".join(chars), start + 1))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _PUNCT and text[i] not in _QUOTES:
                i += 1
            word = text[start:i]
            kind = word.upper() if word.upper() in _KEYWORDS else "word"
            tokens.append(_Token(kind, word, start + 1))
    tokens.append(_Token("end", "", n + 1))
    return tokens


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of filter"
    if tok.kind == "quoted":
        return f"quoted value {tok.text!r}"
    return repr(tok.text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def fail(self, tok: _Token, expected: str) -> FilterSyntaxError:
        return FilterSyntaxError(f"unexpected {_describe(tok)} (expected {expected})", tok.column, self.text)

    def expect(self, kind: str, expected: str) -> _Token:
        tok = self.take()
        if tok.kind != kind:
            raise self.fail(tok, expected)
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            return MatchAll()
        node = self.or_expr()
        tok = self.peek()
        if tok.kind != "end":
            raise self.fail(tok, "AND, OR or end of filter")
        return node

    def or_expr(self) -> Node:
        children = [self.and_expr()]
        while self.peek().kind == "OR":
            self.take()
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def and_expr(self) -> Node:
        children = [self.not_expr()]
        while self.peek().kind == "AND":
            self.take()
            children.append(self.not_expr())
        return children[0] if len(children) == 1 else And(tuple(children))

    def not_expr(self) -> Node:
        tok = self.peek()
        if tok.kind == "NOT":
            self.take()
            return Not(self.not_expr())
        if tok.kind == "(":
            self.take()
            node = self.or_expr()
            self.expect(")", "')', AND or OR")
            return node
        return self.term()

    def value(self) -> str:
        tok = self.take()
        if tok.kind not in ("word", "quoted") + _KEYWORDS:  # country:IN is India, not a keyword
            raise self.fail(tok, "a value")
        return tok.text

    def term(self) -> Node:
        feat = self.take()
        if feat.kind != "word":
            raise self.fail(feat, "a feature name, NOT or '('")
        sep = self.take()
        if sep.kind == ":":
            return Term(feat.text, self.value(), feat.column)
        if sep.kind == "IN":
            self.expect("(", "'(' after IN")
            values = [self.value()]
            while self.peek().kind == ",":
                self.take()
                values.append(self.value())
            self.expect(")", "',' or ')'")
            terms = tuple(Term(feat.text, v, feat.column) for v in values)
            return terms[0] if len(terms) == 1 else Or(terms)
        raise self.fail(sep, f"':' or IN after feature {feat.text!r}")


def parse(text: str) -> Node:
    """Parses one filter expression.

    Args:
        text (str): e.g. ``'lang:en AND (category:music OR category:pop) AND NOT creator:123'``.

    Returns:
        Node: the AST (``Term``/``Not``/``And``/``Or``; ``MatchAll`` for a blank filter).

    Raises:
        FilterSyntaxError: on malformed input, naming the token and its column.

    Example::

        >>> parse("tags:'hip hop' OR NOT lang:en")
        Or(children=(Term(feature='tags', value='hip hop', column=1), Not(child=Term(feature='lang', value='en', column=23))))
    """
    if not isinstance(text, str):
        raise TypeError(f"a filter must be a str, got {type(text).__name__}")
    return _Parser(text).parse()


def to_nnf(node: Node, negate: bool = False) -> Node:
    """Negation normal form: ``NOT`` pushed down to terms (De Morgan), nested ``AND``/``OR`` flattened.

    ``NOT MatchAll`` (never produced by :func:`parse`) is represented as ``Or(())`` (matches nothing).
    """
    if isinstance(node, Term):
        return Not(node) if negate else node
    if isinstance(node, Not):
        return to_nnf(node.child, not negate)
    if isinstance(node, MatchAll):
        return Or(()) if negate else node
    is_and = isinstance(node, And) != negate
    kind = And if is_and else Or
    flat: List[Node] = []
    for child in node.children:
        c = to_nnf(child, negate)
        if isinstance(c, kind):
            flat.extend(c.children)
        else:
            flat.append(c)
    return kind(tuple(flat))
