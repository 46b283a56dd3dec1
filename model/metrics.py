"""Top-K metrics of the offline protocol: HR@10, NDCG@10, Recall@50, Recall@100.

Per user, then averaged. NDCG uses binary gains and an ideal of min(|T|, 10) hits; Recall@K
divides the hits in the top K by min(|T|, K) (``evaluation.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

METRIC_NAMES = ("HR10", "NDCG10", "R50", "R100")


def user_metrics(ranked: np.ndarray, targets: Iterable[int]) -> dict[str, float]:
    """Metrics for one user from the item ids in rank order (at least 100 of them)."""
    t = set(targets)
    if not t:
        raise ValueError("a user without targets cannot be evaluated")
    hits = np.fromiter((int(i) in t for i in ranked[:100]), dtype=bool, count=min(100, len(ranked)))
    discounts = 1.0 / np.log2(np.arange(2, 12))
    dcg = float((hits[:10] * discounts[: len(hits[:10])]).sum())
    idcg = float(discounts[: min(len(t), 10)].sum())
    return {
        "HR10": float(hits[:10].any()),
        "NDCG10": dcg / idcg,
        "R50": float(hits[:50].sum()) / min(len(t), 50),
        "R100": float(hits[:100].sum()) / min(len(t), 100),
    }


def evaluate_scores(
    scores: np.ndarray,
    users: list[int],
    targets: Mapping[int, frozenset[int]],
    exclude: Mapping[int, Iterable[int]],
    item_ids: np.ndarray,
) -> dict[str, float]:
    """Mean metrics over ``users``.

    Args:
        scores: [U, N] score of every catalogue item for each user (row order = ``users``).
        users: user ids of the rows.
        targets: each user's target items.
        exclude: items never to recommend to the user (their history).
        item_ids: [N] the item id of each score column.
    """
    return evaluate_chunks([(users, scores)], targets, exclude, item_ids)


def evaluate_chunks(
    chunks: Iterable[tuple[list[int], np.ndarray]],
    targets: Mapping[int, frozenset[int]],
    exclude: Mapping[int, Iterable[int]],
    item_ids: np.ndarray,
) -> dict[str, float]:
    """Mean metrics over every user of ``chunks`` ((users, [b, N] scores) pairs, scored one
    chunk at a time so only a chunk's scores and each user's top 100 are ever held)."""
    column = {int(i): c for c, i in enumerate(item_ids)}
    totals = dict.fromkeys(METRIC_NAMES, 0.0)
    n = 0
    for users, scores in chunks:
        for row, user in enumerate(users):
            m = user_metrics(
                item_ids[_top(scores[row], exclude.get(user, ()), column)], targets[user]
            )
            for k in METRIC_NAMES:
                totals[k] += m[k]
            n += 1
    return {k: v / n for k, v in totals.items()}


def _top(row: np.ndarray, exclude: Iterable[int], column: Mapping[int, int]) -> np.ndarray:
    """Columns of the 100 best scores in rank order, excluded items never among them."""
    s = row.astype(np.float64, copy=True)
    cols = [column[i] for i in exclude if i in column]
    s[cols] = -np.inf
    # a catalogue of 100 items or fewer is ranked whole (argpartition needs kth < N)
    top = np.argpartition(-s, 100)[:100] if len(s) > 100 else np.arange(len(s))
    top = top[np.isfinite(s[top])]  # an excluded item is never "ranked", even at the bottom
    return top[np.argsort(-s[top], kind="stable")]
