"""Compiling filter expressions to plan tensors: programs, unknown features and values, hashes."""
import time

import numpy as np
import pytest
import torch

from silverrec.ops.reference import (
    BLOOM_AND,
    BLOOM_FALSE,
    BLOOM_NOP,
    BLOOM_NOT_ROWS,
    BLOOM_NOT_TERM,
    BLOOM_OR,
    BLOOM_TERM,
    BLOOM_TRUE,
)
from silverrec.retrieval.filter_expr import FilterError, FilterLimitError, FilterSyntaxError
from silverrec.retrieval.filter_plan import compile_plans, compile_program
from silverrec.retrieval.term_dictionary import TermDictionary


@pytest.fixture()
def dictionary() -> TermDictionary:
    d, offsets, terms = TermDictionary.from_item_terms(
        [{"lang": ["en"], "category": ["music"]}, {"lang": ["de"], "creator": [123]}, {"category": ["pop"]}]
    )
    assert d.terms == (("lang", "en"), ("category", "music"), ("lang", "de"), ("creator", "123"), ("category", "pop"))
    assert offsets.tolist() == [0, 2, 4, 5] and terms.tolist() == [0, 1, 2, 3, 4]
    return d


def test_programs(dictionary: TermDictionary) -> None:
    prog = compile_program("lang:en AND (category:music OR category:pop) AND NOT creator:123", dictionary)
    assert prog == [(BLOOM_TERM, 0), (BLOOM_TERM, 1), (BLOOM_TERM, 4), (BLOOM_OR, -1), (BLOOM_AND, -1),
                    (BLOOM_NOT_TERM, 3), (BLOOM_AND, -1)]
    # De Morgan: NOT (a OR b) = NOT a AND NOT b; the numeric value 123 and the string "123" agree.
    assert compile_program('NOT category IN (music, pop) OR creator:"123"', dictionary) == [
        (BLOOM_NOT_TERM, 1), (BLOOM_NOT_TERM, 4), (BLOOM_AND, -1), (BLOOM_TERM, 3), (BLOOM_OR, -1)]
    assert compile_program("", dictionary) == [(BLOOM_TRUE, -1)]
    assert compile_program("0:de", dictionary) == [(BLOOM_TERM, 2)]  # feature 0 is lang


def test_dense_terms_negate_their_exact_row(dictionary: TermDictionary) -> None:
    dense = np.array([True, False, False, False, False])  # lang:en has an exact row
    assert compile_program("NOT lang:en AND NOT lang:de", dictionary, dense) == [
        (BLOOM_NOT_ROWS, 0), (BLOOM_NOT_TERM, 2), (BLOOM_AND, -1)]
    term_hashes = dictionary.hash_positions(2, 8)
    term_hashes[0] = 8  # the exact row after the 8 signature rows
    plan = compile_plans(["NOT lang:en", "lang:en"], dictionary, term_hashes, dense)
    assert plan.opcodes[:, 0].tolist() == [BLOOM_NOT_ROWS, BLOOM_TERM]
    assert plan.hashes[:, 0].tolist() == [[8, 8], [8, 8]]


def test_unknown_values_match_nothing(dictionary: TermDictionary) -> None:
    assert compile_program("lang:fr", dictionary) == [(BLOOM_FALSE, -1)]
    assert compile_program("NOT lang:fr", dictionary) == [(BLOOM_TRUE, -1)]


@pytest.mark.parametrize("text, message", [
    ("genre:rock", "unknown feature 'genre' in filter; the index knows ['lang', 'category', 'creator'] (at column 1"),
    ("lang:en OR 7:x", "feature id 7 is out of range: the index has 3 features"),
])
def test_unknown_features_raise(dictionary: TermDictionary, text: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_program(text, dictionary)
    assert message in str(info.value)
    assert not isinstance(info.value, FilterSyntaxError)


def test_plan_tensors_padding_and_hashes(dictionary: TermDictionary) -> None:
    term_hashes = dictionary.hash_positions(3, 40)
    assert term_hashes.shape == (5, 3) and term_hashes.min() >= 0 and term_hashes.max() < 40
    assert np.array_equal(term_hashes, dictionary.hash_positions(3, 40))  # deterministic
    plan = compile_plans(["lang:en AND NOT lang:de", "category:pop", "lang:fr"], dictionary, term_hashes)
    assert plan.opcodes.tolist() == [[BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_AND], [BLOOM_TERM, BLOOM_NOP, BLOOM_NOP],
                                     [BLOOM_FALSE, BLOOM_NOP, BLOOM_NOP]]
    assert plan.terms.tolist() == [[0, 2, -1], [4, -1, -1], [-1, -1, -1]]
    assert plan.hashes.shape == (3, 3, 3) and plan.opcodes.dtype == plan.hashes.dtype == torch.int64
    assert plan.hashes[0, 0].tolist() == term_hashes[0].tolist() and plan.hashes[1, 0].tolist() == term_hashes[4].tolist()
    assert int(plan.hashes[0, 1:].abs().sum()) == 0  # only TERM instructions carry hash positions
    padded = compile_plans(["category:pop"], dictionary, term_hashes, length=5)
    assert padded.opcodes.tolist() == [[BLOOM_TERM] + [BLOOM_NOP] * 4] and padded.hashes.shape == (1, 5, 3)
    with pytest.raises(FilterLimitError, match="more than 1 terms, the limit for programs of at most 2 instructions"):
        compile_plans(["category:pop", "lang:en OR lang:de"], dictionary, term_hashes, length=2)
    empty = compile_plans([], dictionary, term_hashes)
    assert empty.opcodes.shape == (0, 1) and empty.hashes.shape == (0, 1, 3)
    with pytest.raises(TypeError, match="sequence"):
        compile_plans("lang:en", dictionary, term_hashes)


def test_dictionary_input_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        TermDictionary.from_item_terms([])
    with pytest.raises(ValueError, match=r"item_terms\[1\]\['lang'\] must be a list"):
        TermDictionary.from_item_terms([{"lang": ["en"]}, {"lang": "en"}])
    with pytest.raises(ValueError, match="not in features"):
        TermDictionary.from_item_terms([{"lang": ["en"]}], features=["category"])


def test_program_limit_is_checked_while_lexing(dictionary: TermDictionary) -> None:
    """``length`` L allows (L + 1) // 2 terms (t terms compile to 2t - 1 instructions); a 10 MB
    filter over it is refused in well under a second, and the message quotes an excerpt."""
    term_hashes = dictionary.hash_positions(2, 16)
    six = " OR ".join(["lang:en"] * 6)
    assert len(compile_program(six, dictionary)) == 11
    assert compile_plans([six], dictionary, term_hashes, length=12).opcodes.shape == (1, 12)
    big = " OR ".join(["lang:en"] * 1_000_000)
    t0 = time.perf_counter()
    with pytest.raises(FilterLimitError, match=r"more than 6 terms, the limit for programs of at most 12 instructions") as info:
        compile_plans(["lang:en", big], dictionary, term_hashes, length=12)
    with pytest.raises(FilterLimitError, match="more than the limit of 100"):
        compile_plans([big], dictionary, term_hashes, max_chars=100)
    assert time.perf_counter() - t0 < 0.1
    assert len(str(info.value)) < 400


def test_case_and_unknown_values_are_values_not_errors(dictionary: TermDictionary) -> None:
    """Values compare exactly: 'EN' is not 'en'. Like any value no item holds it compiles to FALSE
    and its NOT to TRUE; feature names are exact too, and an unknown one is an error."""
    assert compile_program("lang:EN", dictionary) == [(BLOOM_FALSE, -1)]
    assert compile_program("NOT lang:EN", dictionary) == [(BLOOM_TRUE, -1)]
    assert compile_program("lang:en", dictionary) == [(BLOOM_TERM, 0)]
    with pytest.raises(FilterError, match="unknown feature 'Lang'"):
        compile_program("Lang:en", dictionary)
    assert compile_program("lang:en and not lang:de", dictionary) == [(BLOOM_TERM, 0), (BLOOM_NOT_TERM, 2), (BLOOM_AND, -1)]
