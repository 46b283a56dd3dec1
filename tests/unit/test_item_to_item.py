"""The item-to-item source: EASE / cosine weights truncated to top-K rows, served per user."""

from __future__ import annotations

import numpy as np
import torch

from model.baselines import EASE, Interactions, ease_scores
from model.item_to_item import ItemToItem, fit_item_to_item
from model.protocol import UserTimeline


def _timelines(x: np.ndarray) -> dict[int, UserTimeline]:
    """Users 0..U-1 of a binary [U, N] matrix, item j as id 10 + j, one item per second."""
    out = {}
    for u, row in enumerate(x):
        items = [10 + int(j) for j in np.flatnonzero(row)]
        out[u] = UserTimeline(
            u, tuple(float(k) for k in range(len(items))), tuple((i,) for i in items)
        )
    return out


def _matrix(seed: int, users: int = 60, items: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((users, items)) < 0.25).astype(np.float32)


def test_untruncated_ease_source_scores_equal_ease_on_its_positive_weights() -> None:
    x = _matrix(0)
    i2i = fit_item_to_item(_timelines(x), neighbours=x.shape[1], lam=5.0)
    assert i2i.method == "ease"
    # EASE's scores restricted to positive weights: X @ max(B, 0)
    b = EASE(Interactions.from_dense(x), lam=5.0).b
    want = x @ np.maximum(b, 0.0)
    # and with every weight kept it would be EASE itself: the positive part is most of it
    assert np.corrcoef((x @ b).ravel(), want.ravel())[0, 1] > 0.8
    assert np.allclose(x @ b, ease_scores(x, lam=5.0), atol=1e-4)
    for u in range(len(x)):
        hist = [10 + int(j) for j in np.flatnonzero(x[u])]
        got = i2i.user_scores(hist).of(np.arange(10, 10 + x.shape[1]))
        np.testing.assert_allclose(got, want[u], rtol=1e-4, atol=1e-5)


def test_top_excludes_watched_is_best_first_and_truncation_keeps_k_per_row() -> None:
    x = _matrix(1)
    i2i = fit_item_to_item(_timelines(x), neighbours=3)
    assert i2i.neighbours.shape[1] == 3
    hist = [10, 11, 12]
    us = i2i.user_scores(hist)
    ids, scores = us.top(5, exclude=hist)
    assert not set(ids.tolist()) & set(hist)
    assert (np.diff(scores) <= 0).all() and (scores > 0).all()
    np.testing.assert_allclose(us.of(ids), scores)
    assert us.of([999]).tolist() == [0.0]  # an unknown item scores 0
    # a history item is counted once, whatever the repeats
    np.testing.assert_allclose(i2i.user_scores([10, 10, 11, 12]).of(ids), scores)


def test_over_the_memory_budget_the_sparse_cosine_model_is_used() -> None:
    x = _matrix(2)
    i2i = fit_item_to_item(_timelines(x), budget_mb=0.0, neighbours=4)
    assert i2i.method == "cosine"
    assert i2i.neighbours.shape[1] == 4
    # every kept neighbour is a real co-watched item with a positive cosine weight
    cooc = x.T @ x
    for row, src in enumerate(i2i.items):
        for nb, w in zip(i2i.neighbours[row], i2i.weights[row], strict=True):
            if nb >= 0:
                assert w > 0 and nb != src and cooc[src - 10, nb - 10] > 0


def test_tables_round_trip_through_tensors_and_refuse_a_shape_mismatch() -> None:
    i2i = fit_item_to_item(_timelines(_matrix(3)), neighbours=5)
    again = ItemToItem.from_tensors(i2i.tensors(), i2i.method)
    assert again is not None
    for a, b in (
        (again.items, i2i.items),
        (again.neighbours, i2i.neighbours),
        (again.weights, i2i.weights),
    ):
        assert np.array_equal(a, b)
    assert ItemToItem.from_tensors({"model.x": torch.zeros(1)}, "ease") is None
    bad = dict(i2i.tensors())
    bad["i2i.weights"] = bad["i2i.weights"][:-1]
    try:
        ItemToItem.from_tensors(bad, "ease")
    except ValueError as exc:
        assert "disagree" in str(exc)
    else:
        raise AssertionError("a truncated weight table was accepted")


def test_member_of_agrees_with_isin_on_random_ids() -> None:
    from model.features import member_of

    rng = np.random.default_rng(3)
    for _ in range(50):
        ids = rng.integers(0, 40, int(rng.integers(0, 30)))
        members = rng.integers(0, 40, int(rng.integers(0, 30)))
        np.testing.assert_array_equal(member_of(ids, members), np.isin(ids, members))


def test_vocab_int_rows_agree_with_row_by_row_lookup() -> None:
    from model.features import Vocab

    rng = np.random.default_rng(4)
    vocab = Vocab([int(i) for i in rng.permutation(100)[:60]])
    ids = rng.integers(-5, 120, 500)
    np.testing.assert_array_equal(vocab.int_rows(ids), np.array(vocab.rows(ids.tolist())))
    assert Vocab([]).int_rows(ids).tolist() == [0] * len(ids)
