"""Offline metrics of the ranker (``evaluation.md``, Ranking).

* **Weighted, per-user loss** (paper §4.2): over held-out pairs of a watched and an unwatched
  impression on the same page (so the same user and moment), the watched one's watch time counts
  as mispredicted when the unwatched one scores at least as high (ties count half); loss =
  mispredicted watch time / total watch time of those pairs.
* **AUC** of the score for watched-or-not, pooled over all held-out impressions.
* **NDCG@10** of each page's ranking with watch time as the gain, averaged over pages with a
  watch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from model.ranking_data import Page


def weighted_pair_loss(pages: Sequence[Page], scores: Sequence[np.ndarray]) -> float:
    """Mispredicted watch time / watch time over same-page (watched, unwatched) pairs."""
    wrong = total = 0.0
    for page, s in zip(pages, scores, strict=True):
        pos = np.flatnonzero(page.clicked)
        neg = np.flatnonzero(~page.clicked)
        if len(pos) == 0 or len(neg) == 0:
            continue
        t = page.watch_seconds[pos]
        beaten = (s[neg][None, :] > s[pos][:, None]).sum(axis=1)
        tied = (s[neg][None, :] == s[pos][:, None]).sum(axis=1)
        wrong += float((t * (beaten + 0.5 * tied)).sum())
        total += float(t.sum() * len(neg))
    return wrong / total if total else float("nan")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the rank-sum statistic (ties get average ranks)."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    bounds = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1, len(scores)]
    for lo, hi in itertools.pairwise(bounds):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ndcg_at_10(pages: Sequence[Page], scores: Sequence[np.ndarray]) -> float:
    """Mean NDCG@10 with watch-time gains over pages that have a watch."""
    out = []
    disc = 1.0 / np.log2(np.arange(2, 12))
    for page, s in zip(pages, scores, strict=True):
        gains = page.watch_seconds
        if gains.sum() <= 0:
            continue
        top = np.argsort(-s, kind="stable")[:10]
        ideal = np.sort(gains)[::-1][:10]
        out.append(
            float((gains[top] * disc[: len(top)]).sum() / (ideal * disc[: len(ideal)]).sum())
        )
    return float(np.mean(out)) if out else float("nan")


def ranking_metrics(pages: Sequence[Page], scores: Sequence[np.ndarray]) -> dict[str, float]:
    labels = np.concatenate([p.clicked for p in pages])
    return {
        "weighted_loss": weighted_pair_loss(pages, scores),
        "auc": auc(labels, np.concatenate(scores)),
        "ndcg10": ndcg_at_10(pages, scores),
    }


def split_scores(pages: Sequence[Page], flat: np.ndarray) -> list[np.ndarray]:
    """Cut a flat [R] score vector back into per-page arrays."""
    bounds = np.cumsum([len(p.clicked) for p in pages])[:-1]
    return np.split(flat, bounds)
