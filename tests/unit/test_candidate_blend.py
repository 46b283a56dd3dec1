"""Merging candidate sources: each item once, every source's score and rank as columns."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.candidate_blend import SourceList, merge


def test_merge_keeps_first_source_order_and_fills_the_other_sources_opinion() -> None:
    blend = merge(
        {
            "candidates": SourceList(np.array([5, 3, 9]), np.array([0.9, 0.8, 0.7])),
            "i2i": SourceList(np.array([3, 7]), np.array([2.0, 1.0])),
        },
        {"candidates": lambda ids: ids * 0.01, "i2i": lambda ids: np.zeros(len(ids))},
    )
    assert blend.ids.tolist() == [5, 3, 9, 7]
    assert blend.source == ["candidates", "candidates+i2i", "candidates", "i2i"]
    assert blend.primary.tolist() == [0.9, 0.8, 0.7, 1.0]
    assert blend.scores["candidates"].tolist() == [0.9, 0.8, 0.7, 0.07]
    assert blend.scores["i2i"].tolist() == [0.0, 2.0, 0.0, 1.0]
    assert blend.ranks["candidates"].tolist() == [0, 1, 2, np.inf]
    assert blend.ranks["i2i"].tolist() == [np.inf, 0, np.inf, 1]
    assert blend.of_rows(np.array([3])) == [({"candidates": 0.07, "i2i": 1.0}, {"i2i": 1})]


def test_a_missing_source_gives_infinite_columns() -> None:
    blend = merge({"candidates": SourceList(np.array([4, 2]), np.array([1.0, 0.5]))}, {})
    assert blend.ids.tolist() == [4, 2] and blend.source == ["candidates"] * 2
    assert np.isinf(blend.scores["i2i"]).all() and np.isinf(blend.ranks["i2i"]).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 30), unique=True, max_size=12),
    st.lists(st.integers(0, 30), unique=True, max_size=12),
)
def test_every_nominated_item_appears_once_with_its_own_ranks(a: list[int], b: list[int]) -> None:
    blend = merge(
        {
            "candidates": SourceList(np.array(a, np.int64), -np.arange(len(a), dtype=float)),
            "i2i": SourceList(np.array(b, np.int64), -np.arange(len(b), dtype=float)),
        },
        {},
    )
    assert sorted(blend.ids.tolist()) == sorted(set(a) | set(b))
    for s, own in (("candidates", a), ("i2i", b)):
        for r, item in enumerate(own):
            j = blend.ids.tolist().index(item)
            assert blend.ranks[s][j] == r
        assert np.isfinite(blend.ranks[s]).sum() == len(own)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 30), unique=True, max_size=12),
    st.lists(st.integers(0, 30), unique=True, max_size=12),
    st.randoms(use_true_random=False),
)
def test_per_row_sources_are_each_candidates_finite_scores_and_ranks(
    a: list[int], b: list[int], rnd: object
) -> None:
    """``of_rows`` (the response's source_scores / source_ranks, built per column) holds, for
    every candidate, exactly the sources whose score and rank are finite, with their values."""
    blend = merge(
        {
            "candidates": SourceList(np.array(a, np.int64), np.linspace(2.0, 1.0, len(a))),
            "i2i": SourceList(np.array(b, np.int64), np.linspace(0.5, 0.1, len(b))),
        },
        {},  # no fill: an item one source did not nominate has an infinite score there
    )
    rows = np.arange(len(blend))
    rnd.shuffle(rows)  # type: ignore[attr-defined]
    got = blend.of_rows(rows)
    assert len(got) == len(rows)
    for j, (scores, ranks) in zip(rows.tolist(), got, strict=True):
        for s in ("candidates", "i2i"):
            if np.isfinite(blend.scores[s][j]):
                assert scores[s] == float(blend.scores[s][j])
            else:
                assert s not in scores
            if np.isfinite(blend.ranks[s][j]):
                assert ranks[s] == int(blend.ranks[s][j]) and isinstance(ranks[s], int)
            else:
                assert s not in ranks
        assert set(ranks) <= set(scores)
    assert blend.of_rows(np.zeros(0, np.int64)) == []
