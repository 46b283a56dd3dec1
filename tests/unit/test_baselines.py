"""The sparse, chunked baselines equal their dense closed forms, and the chunked metrics equal
the metrics of one score matrix (model/baselines.py, model/metrics.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from model import baselines
from model.baselines import EASE, Interactions, ItemKNN, MostPop, chunks, ease_bytes
from model.metrics import evaluate_chunks, evaluate_scores


def _random(seed: int, users: int = 300, items: int = 150) -> tuple[np.ndarray, Interactions]:
    rng = np.random.default_rng(seed)
    x = (rng.random((users, items)) < rng.random(items) * 0.2).astype(np.float32)
    dense = Interactions.from_dense(x)
    return x, replace(dense, item_ids=dense.item_ids + 1000)  # ids unlike column numbers


def test_rows_and_gram_blocks_are_the_dense_matrix() -> None:
    x, inter = _random(0)
    assert np.array_equal(inter.rows(10, 50), x[10:50])
    assert np.array_equal(inter.sparse_rows(10, 50).to_dense().numpy(), x[10:50])
    assert np.array_equal(inter.gram_columns(20, 90), (x.T @ x)[:, 20:90])


def test_item_knn_equals_the_dense_top_neighbour_model(monkeypatch) -> None:
    monkeypatch.setattr(baselines, "ITEM_CHUNK", 32)  # several column blocks
    x, inter = _random(1)
    norms = np.sqrt(x.sum(axis=0)) + 1e-9
    sim = (x.T @ x) / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    full = ItemKNN(inter, neighbours=x.shape[1]).scores(0, len(x))
    np.testing.assert_allclose(full, x @ sim, rtol=1e-5, atol=1e-6)
    kept = ItemKNN(inter, neighbours=20).sim.to_dense().numpy()
    for j in range(x.shape[1]):  # each item keeps its 20 most similar (ties: any of them)
        col = kept[:, j]
        assert np.count_nonzero(col) <= 20
        top = np.sort(sim[:, j])[-20:]
        np.testing.assert_allclose(np.sort(col)[-20:], top)


def test_ease_equals_its_closed_form() -> None:
    x, inter = _random(2)
    gram = (x.T @ x).astype(np.float64) + 50.0 * np.eye(x.shape[1])
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(EASE(inter, lam=50.0).scores(0, len(x)), x @ b, rtol=1e-5)
    assert ease_bytes(23_715) / 2**20 > 4096  # the public data set's shape: skipped by default


def test_metrics_of_chunks_equal_the_metrics_of_the_whole(monkeypatch) -> None:
    x, inter = _random(3)
    rng = np.random.default_rng(3)
    targets = {
        u: frozenset(rng.choice(inter.item_ids, size=3, replace=False).tolist())
        for u in inter.users
    }
    exclude = {u: inter.item_ids[np.flatnonzero(x[u])].tolist() for u in inter.users}
    whole = evaluate_scores(
        MostPop(inter).scores(0, len(x)), inter.users, targets, exclude, inter.item_ids
    )
    monkeypatch.setattr(baselines, "USER_CHUNK", 64)
    parts = list(chunks(MostPop(inter)))
    assert len(parts) == 5
    assert evaluate_chunks(parts, targets, exclude, inter.item_ids) == whole
