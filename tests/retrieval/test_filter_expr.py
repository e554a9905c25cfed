"""The filter language parser: grammar, precedence, errors with columns, fuzzing."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.retrieval.bloom_strategies import FEATURES, expressions, oracle
from silverrec.retrieval.filter_expr import And, FilterSyntaxError, MatchAll, Node, Not, Or, Term, parse, to_nnf


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
