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

Limits are checked before the work they bound, so no input can make the parser slow or crash
it: nesting (parentheses and ``NOT``) deeper than :data:`MAX_DEPTH` levels is a
:class:`FilterSyntaxError` (the parser recurses once per level, and would otherwise hit Python's
recursion limit); ``max_chars`` refuses a long text before it is lexed; ``max_terms`` refuses a
filter with too many terms as soon as the lexer reaches the first term too many (tokens are lexed
on demand, never all up front). Error messages quote at most an excerpt of the filter
(:func:`excerpt`), never a whole long input.

Example::

    >>> from silverrec.retrieval.filter_expr import parse
    >>> parse('lang:en AND NOT creator:123')
    And(children=(Term(feature='lang', value='en', column=1), Not(child=Term(feature='creator', value='123', column=17))))
    >>> parse('category IN (music, pop)')
    Or(children=(Term(feature='category', value='music', column=1), Term(feature='category', value='pop', column=1)))
"""
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple, Union

MAX_DEPTH = 64
"""Deepest nesting of parentheses and ``NOT`` a filter may have (each level is a few frames of
recursion in the parser and in :func:`to_nnf`; 64 stays far below Python's recursion limit)."""

EXCERPT_CHARS = 80
"""Most characters of a filter quoted in an error message."""


def excerpt(text: str, column: Optional[int] = None, width: int = EXCERPT_CHARS) -> str:
    """A short quotation of a filter for error messages.

    Args:
        text (str): the filter.
        column (Optional[int]): 1-based column the message is about; the excerpt is centred on
            it (None: the start of the filter).
        width (int): most characters of ``text`` quoted.

    Returns:
        str: ``repr(text)`` when it has at most ``width`` characters, else ``width`` characters
        around ``column`` with ``...`` where text was cut and the filter's length, e.g.
        ``'language:en OR langua...' (700000 characters)``.

    Example::

        >>> excerpt("a:1")
        "'a:1'"
        >>> excerpt("x" * 100, width=10)
        "'xxxxxxxxxx'... (100 characters)"
    """
    if len(text) <= width:
        return repr(text)
    start = 0 if column is None else min(max(0, column - 1 - width // 2), len(text) - width)
    head = "..." if start > 0 else ""
    tail = "..." if start + width < len(text) else ""
    return f"{head}{text[start:start + width]!r}{tail} ({len(text)} characters)"


class FilterError(ValueError):
    """A filter expression that cannot be evaluated (bad syntax, unknown feature, over a limit)."""


class FilterSyntaxError(FilterError):
    """A malformed filter expression.

    Args:
        message (str): what is wrong.
        column (int): 1-based column of the offending character in the expression.
        text (str): the whole expression (the message quotes only an excerpt of it).
    """

    def __init__(self, message: str, column: int, text: str) -> None:
        super().__init__(f"{message} at column {column} in filter {excerpt(text, column)}")
        self.column = column
        self.text = text


class FilterLimitError(FilterError):
    """A well-formed filter over a size limit (too many characters, or too many terms for the
    program length an exported graph accepts). The message names the limit."""


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
# One regex per token class: the lexer then loops once per token, not once per character, so
# lexing stays cheap for long values. \s is str.isspace() for str patterns.
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"""[^\s():,"']+""")
# a quoted value: any characters, a backslash pair counted as one unit, up to the closing quote
_QUOTED = {q: re.compile(q + r"((?:[^" + q + r"\\]|\\.)*)" + q, re.DOTALL) for q in _QUOTES}
_UNESCAPE = {q: re.compile(r"\\([" + q + r"\\])") for q in _QUOTES}  # \" and \\ only; other \x stay


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "quoted", one of _PUNCT, one of _KEYWORDS, or "end"
    text: str
    column: int


def _tokens(text: str) -> Iterator[_Token]:
    """Lexes ``text`` lazily, ending with one ``end`` token: the parser stops pulling tokens at
    its first error or exceeded limit, so the rest of a long filter is never lexed."""
    i, n = 0, len(text)
    while True:
        space = _SPACE.match(text, i)
        if space:
            i = space.end()
        if i >= n:
            break
        ch = text[i]
        if ch in _PUNCT:
            yield _Token(ch, ch, i + 1)
            i += 1
        elif ch in _QUOTES:
            m = _QUOTED[ch].match(text, i)
            if m is None:
                raise FilterSyntaxError(f"unterminated quoted value starting with {ch}", i + 1, text)
            yield _Token("quoted", _UNESCAPE[ch].sub(r"\1", m.group(1)), i + 1)
            i = m.end()
        else:
            m = _WORD.match(text, i)
            assert m is not None  # ch is neither space, punctuation nor a quote
            word = m.group()
            kind = word.upper() if word.upper() in _KEYWORDS else "word"
            yield _Token(kind, word, i + 1)
            i = m.end()
    yield _Token("end", "", n + 1)


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of filter"
    text = tok.text if len(tok.text) <= EXCERPT_CHARS else tok.text[:EXCERPT_CHARS] + "..."
    if tok.kind == "quoted":
        return f"quoted value {text!r}"
    return repr(text)


class _Parser:
    """Recursive descent with one token of lookahead over the lazy lexer.

    Args:
        text (str): the filter.
        max_depth (int): deepest nesting of ``(`` and ``NOT``.
        max_terms (Optional[int]): most terms (``IN`` values count one each); None: no limit.
        limit_name (str): where the term limit comes from, for its error message.
    """

    def __init__(self, text: str, max_depth: int, max_terms: Optional[int], limit_name: str) -> None:
        self.text = text
        self._lexer = _tokens(text)
        self._next = next(self._lexer)
        self.max_depth = max_depth
        self.max_terms = max_terms
        self.limit_name = limit_name
        self.depth = 0
        self.terms = 0

    def peek(self) -> _Token:
        return self._next

    def take(self) -> _Token:
        tok = self._next
        if tok.kind != "end":
            self._next = next(self._lexer)
        return tok

    def fail(self, tok: _Token, expected: str) -> FilterSyntaxError:
        return FilterSyntaxError(f"unexpected {_describe(tok)} (expected {expected})", tok.column, self.text)

    def expect(self, kind: str, expected: str) -> _Token:
        tok = self.take()
        if tok.kind != kind:
            raise self.fail(tok, expected)
        return tok

    def count_term(self, tok: _Token) -> None:
        """Counts one term and refuses the filter at the first term over ``max_terms``."""
        self.terms += 1
        if self.max_terms is not None and self.terms > self.max_terms:
            raise FilterLimitError(
                f"filter has more than {self.max_terms} terms, the limit{self.limit_name}: the term at column "
                f"{tok.column} is one too many in filter {excerpt(self.text, tok.column)}")

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
        if tok.kind not in ("NOT", "("):
            return self.term()
        # each NOT and each "(" is one level of recursion: bound it before recursing
        if self.depth >= self.max_depth:
            raise FilterSyntaxError(f"filter nests deeper than {self.max_depth} levels (parentheses and NOT)",
                                    tok.column, self.text)
        self.depth += 1
        self.take()
        if tok.kind == "NOT":
            node: Node = Not(self.not_expr())
        else:
            node = self.or_expr()
            self.expect(")", "')', AND or OR")
        self.depth -= 1
        return node

    def value(self) -> str:
        tok = self.take()
        if tok.kind not in ("word", "quoted") + _KEYWORDS:  # country:IN is India, not a keyword
            raise self.fail(tok, "a value")
        self.count_term(tok)
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
        raise self.fail(sep, f"':' or IN after feature {_describe(feat)}")


def parse(text: str, max_depth: int = MAX_DEPTH, max_terms: Optional[int] = None, max_chars: Optional[int] = None,
          limit_name: str = " (max_terms)") -> Node:
    """Parses one filter expression.

    Args:
        text (str): e.g. ``'lang:en AND (category:music OR category:pop) AND NOT creator:123'``.
        max_depth (int): deepest nesting of parentheses and ``NOT`` (default :data:`MAX_DEPTH`;
            at most :data:`MAX_DEPTH`, which keeps the recursion safe).
        max_terms (Optional[int]): most terms (each ``IN`` value is one); checked while lexing,
            so a long filter is refused after ``max_terms + 1`` terms. None: no limit.
        max_chars (Optional[int]): most characters, checked before lexing. None: no limit.
        limit_name (str): says where ``max_terms`` comes from in its error message (appended to
            "the limit").

    Returns:
        Node: the AST (``Term``/``Not``/``And``/``Or``; ``MatchAll`` for a blank filter).

    Raises:
        FilterSyntaxError: on malformed input, naming the token and its column, and on nesting
            deeper than ``max_depth`` (``filter nests deeper than 64 levels ...``).
        FilterLimitError: over ``max_chars`` or ``max_terms`` (the message names the limit).

    Example::

        >>> parse("tags:'hip hop' OR NOT lang:en")
        Or(children=(Term(feature='tags', value='hip hop', column=1), Not(child=Term(feature='lang', value='en', column=23))))
    """
    if not isinstance(text, str):
        raise TypeError(f"a filter must be a str, got {type(text).__name__}")
    if not 1 <= max_depth <= MAX_DEPTH:
        raise ValueError(f"max_depth must be in [1, {MAX_DEPTH}], got {max_depth}")
    if max_chars is not None and len(text) > max_chars:
        raise FilterLimitError(f"filter has {len(text)} characters, more than the limit of {max_chars} (max_chars): "
                               f"{excerpt(text)}")
    return _Parser(text, max_depth, max_terms, limit_name).parse()


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
