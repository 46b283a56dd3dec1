"""In-house baselines printed beside watchnext in ``eval candidates``: MostPop, ItemKNN, EASE.

Both see exactly what the neural model sees (the visible timelines of the split) and score the
full catalogue.
"""

from __future__ import annotations

import numpy as np

from model.protocol import Split


def interaction_matrix(split: Split, n_items: int, index: dict[int, int]) -> np.ndarray:
    """[U, N] binary user x item matrix of the visible history (row order: sorted users)."""
    users = sorted(split.targets)
    x = np.zeros((len(users), n_items), dtype=np.float32)
    for r, u in enumerate(users):
        for items in split.timelines[u].items:
            for i in items:
                if i in index:
                    x[r, index[i]] = 1.0
    return x


def most_pop_scores(x: np.ndarray) -> np.ndarray:
    """Every user gets the items' visible interaction counts."""
    return np.broadcast_to(x.sum(axis=0, keepdims=True), x.shape).copy()


def item_knn_scores(x: np.ndarray, neighbours: int = 200) -> np.ndarray:
    """Cosine item-item similarity, each item keeping its top ``neighbours``; score = X @ S."""
    norms = np.sqrt(x.sum(axis=0)) + 1e-9
    sim = (x.T @ x) / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    if neighbours < sim.shape[0]:
        cut = np.argpartition(-sim, neighbours, axis=0)[neighbours:]
        np.put_along_axis(sim, cut, 0.0, axis=0)
    return x @ sim


def ease_scores(x: np.ndarray, lam: float = 300.0) -> np.ndarray:
    """EASE (Steck 2019): closed-form item-item weights B = I - P / diag(P), P = (XᵀX + λI)⁻¹,
    zero diagonal; score = X @ B. Exact for catalogues that fit an [N, N] inverse."""
    gram = (x.T @ x).astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return (x @ b).astype(np.float32)
