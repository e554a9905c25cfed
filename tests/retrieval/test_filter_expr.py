"""The filter language parser: grammar, precedence, errors with columns, fuzzing."""
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.retrieval.bloom_strategies import FEATURES, expressions, oracle
from silverrec.retrieval.filter_expr import (
    MAX_DEPTH, And, FilterLimitError, FilterSyntaxError, MatchAll, Node, Not, Or, Term, excerpt, parse, to_nnf,
)


def _eval(node: Node, item: dict) -> bool:
    """Evaluates a parsed AST on an item (numeric features resolved through FEATURES)."""
    if isinstance(node, MatchAll):
        return True
    if isinstance(node, Term):
        feature = FEATURES[int(node.feature)] if node.feature.isdigit() else node.feature
        return node.value in {str(v) for v in item.get(feature, [])}
    if isinstance(node, Not):
        return not _eval(node.child, item)
    results = [_eval(c, item) for c in node.children]
    return all(results) if isinstance(node, And) else any(results)


def _t(feature: str, value: str, column: int) -> Term:
    return Term(feature, value, column)


def test_issue_example_and_precedence() -> None:
    ast = parse("lang:en AND (category:music OR category:pop) AND NOT creator:123")
    assert ast == And((_t("lang", "en", 1), Or((_t("category", "music", 14), _t("category", "pop", 32))),
                       Not(_t("creator", "123", 54))))
    assert parse("a:1 OR b:2 AND c:3") == Or((_t("a", "1", 1), And((_t("b", "2", 8), _t("c", "3", 16)))))
    assert parse("NOT a:1 AND b:2") == And((Not(_t("a", "1", 5)), _t("b", "2", 13)))


def test_in_quotes_numeric_and_case() -> None:
    assert parse("category IN (music, pop)") == Or((_t("category", "music", 1), _t("category", "pop", 1)))
    assert parse("category in ('hip hop')") == _t("category", "hip hop", 1)
    assert parse('tags:"say \\"hi\\" \\\\ o/"') == _t("tags", 'say "hi" \\ o/', 1)
    assert parse("3:17") == _t("3", "17", 1)
    assert parse("lang:en-US and not genre:sci-fi/fantasy") == And((_t("lang", "en-US", 1), Not(_t("genre", "sci-fi/fantasy", 20))))
    assert parse("country:IN AND tag:not") == And((_t("country", "IN", 1), _t("tag", "not", 16)))  # values, not keywords
    assert parse("   ") == MatchAll() and parse("") == MatchAll()


@pytest.mark.parametrize(
    "text, message, column",
    [
        ("lang:en AND (a:b))", "unexpected ')'", 18),
        ("(lang:en OR a:b", "unexpected end of filter", 16),
        ("lang:", "unexpected end of filter (expected a value)", 6),
        ("lang en", "unexpected 'en' (expected ':' or IN", 6),
        ("lang:en AND", "unexpected end of filter", 12),
        ("lang:en category:pop", "unexpected 'category'", 9),
        ('tags:"hip hop', "unterminated quoted value", 6),
        ("category IN ()", "unexpected ')' (expected a value)", 14),
        ("category IN (a b)", "unexpected 'b'", 16),
        ("AND lang:en", "unexpected 'AND'", 1),
        (":x", "unexpected ':'", 1),
        ('"lang":en', "unexpected quoted value", 1),
    ],
)
def test_errors_name_token_and_column(text: str, message: str, column: int) -> None:
    with pytest.raises(FilterSyntaxError, match=re.escape(message)) as info:
        parse(text)
    assert info.value.column == column
    assert f"at column {column}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_non_string_is_type_error() -> None:
    with pytest.raises(TypeError, match="str"):
        parse(None)  # type: ignore[arg-type]


_ALPHABET = st.sampled_from(list("():,\"'\\ ab1-_:") + ["AND", "OR", "NOT", "IN", " and ", "lang", "\t", "é"])


@settings(deadline=None, max_examples=400, derandomize=True)
@given(st.one_of(st.text(max_size=40), st.lists(_ALPHABET, max_size=25).map("".join)))
def test_fuzz_parses_or_raises_own_error(text: str) -> None:
    try:
        node = parse(text)
    except FilterSyntaxError as err:
        assert 1 <= err.column <= len(text) + 1
    else:
        assert isinstance(node, (Term, Not, And, Or, MatchAll))


@settings(deadline=None, max_examples=150, derandomize=True)
@given(expr=expressions(), items=st.lists(st.fixed_dictionaries(
    {f: st.lists(st.sampled_from(("en", "de", "music", "hip hop", "t1", "t2", "101", "zz")), max_size=3) for f in FEATURES}),
    min_size=1, max_size=5))
def test_generated_expressions_mean_what_they_say(expr, items) -> None:
    ast, text = expr
    node = parse(text)
    nnf = to_nnf(node)
    for item in items:
        assert _eval(node, item) == oracle(ast, item)
        assert _eval(nnf, item) == oracle(ast, item)


def test_nnf_pushes_not_to_terms() -> None:
    nnf = to_nnf(parse("NOT (a:1 AND (b:2 OR NOT c:3))"))
    assert nnf == Or((Not(_t("a", "1", 6)), And((Not(_t("b", "2", 15)), _t("c", "3", 26)))))


# --- limits: nesting depth, length, excerpts --------------------------------------------------


@pytest.mark.parametrize("text", ["(" * 1000 + "language:en" + ")" * 1000, "NOT " * 2000 + "language:en",
                                  "(" * 65 + "a:b" + ")" * 65, "NOT " * 65 + "a:b", "(NOT " * 40 + "a:b" + ")" * 40])
def test_deep_nesting_is_a_syntax_error_naming_the_limit(text: str) -> None:
    """Deeper than MAX_DEPTH levels of '(' and NOT: a FilterSyntaxError, never a RecursionError."""
    with pytest.raises(FilterSyntaxError, match=f"filter nests deeper than {MAX_DEPTH} levels") as info:
        parse(text)
    assert len(str(info.value)) < 300  # an excerpt of the filter, not all of it


def test_nesting_up_to_the_limit_parses() -> None:
    assert parse("(" * MAX_DEPTH + "a:b" + ")" * MAX_DEPTH) == _t("a", "b", MAX_DEPTH + 1)
    node = parse("NOT " * MAX_DEPTH + "a:b")
    assert to_nnf(node) == _t("a", "b", 4 * MAX_DEPTH + 1)  # an even number of NOTs
    with pytest.raises(FilterSyntaxError, match="nests deeper than 3 levels"):
        parse("((( NOT a:b)))", max_depth=3)
    with pytest.raises(ValueError, match="max_depth"):
        parse("a:b", max_depth=MAX_DEPTH + 1)  # deeper would no longer be safe from recursion


def test_long_filters_are_refused_while_lexing() -> None:
    """A 10 MB filter over the term or character limit is refused in well under a second (the
    whole filter takes seconds to parse): the lexer stops at the first term too many."""
    big = " OR ".join(["language:en"] * 700_000)
    t0 = time.perf_counter()
    with pytest.raises(FilterLimitError, match="more than 6 terms") as terms:
        parse(big, max_terms=6)
    with pytest.raises(FilterLimitError, match=f"filter has {len(big)} characters, more than the limit of 4096") as chars:
        parse(big, max_chars=4096)
    assert time.perf_counter() - t0 < 0.1
    for info in (terms, chars):
        assert len(str(info.value)) < 400 and f"({len(big)} characters)" in str(info.value)
    assert parse(" OR ".join(["a:b"] * 6), max_terms=6) == Or(tuple(_t("a", "b", 1 + 7 * i) for i in range(6)))
    with pytest.raises(FilterLimitError, match="more than 6 terms"):
        parse("a IN (1, 2, 3, 4, 5, 6, 7)", max_terms=6)  # each IN value is a term


def test_syntax_errors_quote_an_excerpt_around_the_column() -> None:
    text = "language:en AND " * 1000 + "language:"
    with pytest.raises(FilterSyntaxError, match="expected a value") as info:
        parse(text)
    msg = str(info.value)
    assert info.value.column == len(text) + 1 and info.value.text == text
    assert len(msg) < 300 and msg.endswith(f"'... ({len(text)} characters)".replace("'... ", "' "))  # the end is shown
    assert "AND language:" in msg
    assert excerpt("a:1") == "'a:1'" and excerpt("x" * 100, 50, width=10).startswith("...'xxxxxxxxxx'...")
    with pytest.raises(FilterSyntaxError) as long_word:
        parse("x" * 5000 + " y")
    assert len(str(long_word.value)) < 400


def test_quoted_values_lex_as_before() -> None:
    assert parse(r"""a:"x\y" OR b:'it\'s' OR c:"\\" OR d:'\"'""") == Or((
        _t("a", "x\\y", 1), _t("b", "it's", 12), _t("c", "\\", 25), _t("d", '\\"', 35)))
    with pytest.raises(FilterSyntaxError, match="unterminated quoted value") as info:
        parse('a:"abc\\"')
    assert info.value.column == 3
