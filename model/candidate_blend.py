"""Merging the candidate sources of one request into one deduplicated list (paper Fig. 2).

Each source nominates its own top list; the merge keeps every item once, in the order of the
first source that nominated it, and gives every candidate every source's score (the neural
source's u·v and the item-to-item sum, whichever source nominated it) and the rank it holds in
each source's list (+inf where that source did not nominate it). These columns are ranker
features (:data:`model.ranking_features.SOURCES`), built as arrays, not per candidate.

Shapes: C candidates after the merge, R_s the length of source s's list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from model.ranking_features import SOURCES, CandidateColumns

# label of each subset of SOURCES (bit k set = source k nominated the item)
_LABELS = [
    "+".join(s for k, s in enumerate(SOURCES) if m >> k & 1) for m in range(1 << len(SOURCES))
]
_LABEL_ARRAY = np.array(_LABELS, dtype=object)  # indexed by a [C] mask array at once


@dataclass(frozen=True)
class SourceList:
    """One source's nominations for one request, best first: ids [R_s], scores [R_s], and
    their ranks in the source's own list when that is not 0..R_s-1 (a source that ranks but
    does not nominate passes only the items other sources nominated, with their ranks)."""

    ids: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray | None = None


@dataclass(frozen=True)
class Blend:
    """The merged candidates of one request, with their per-source columns."""

    ids: np.ndarray  # [C] int64
    source: list[str]  # [C] which sources nominated it: "candidates", "i2i", "candidates+i2i"
    primary: np.ndarray  # [C] the score of the first source that nominated it
    scores: dict[str, np.ndarray]  # SOURCES name -> [C] float64
    ranks: dict[str, np.ndarray]  # SOURCES name -> [C] float64, +inf = not nominated

    def __len__(self) -> int:
        return len(self.ids)

    def columns(self, rows: np.ndarray | None = None) -> CandidateColumns:
        """The merge (or its ``rows``) as the ranker's feature builder reads candidates."""
        if rows is None:
            return CandidateColumns(self.ids, self.source, self.primary, self.scores, self.ranks)
        return CandidateColumns(
            self.ids[rows],
            [self.source[int(j)] for j in rows],
            self.primary[rows],
            {s: v[rows] for s, v in self.scores.items()},
            {s: v[rows] for s, v in self.ranks.items()},
        )

    def of_rows(self, rows: np.ndarray) -> list[tuple[dict[str, float], dict[str, int]]]:
        """Each candidate of ``rows``'s finite per-source scores and ranks (for its response
        item and impression record): one slice per column, then plain Python floats (a NumPy
        scalar test per item and source cost 15 µs: 45 s of 110 s when ``eval system`` served
        31,013 users a top 100 each)."""
        scores = [(s, v[rows].tolist()) for s, v in self.scores.items()]
        ranks = [(s, v[rows].tolist()) for s, v in self.ranks.items()]
        fin = math.isfinite
        return [
            (
                {s: c[n] for s, c in scores if fin(c[n])},
                {s: int(c[n]) for s, c in ranks if fin(c[n])},
            )
            for n in range(len(rows))
        ]


def merge(
    lists: Mapping[str, SourceList],
    score_of: Mapping[str, Callable[[np.ndarray], np.ndarray]],
) -> Blend:
    """Merge the sources' lists (in :data:`SOURCES` order) into one deduplicated candidate list.

    Args:
        lists: each source's nominations; a source may be missing (not shipped).
        score_of: per source, the score it gives any item ids (so an item nominated by one
            source still carries the other's opinion); a source without one gets +inf
            ("not computed") for items it did not nominate.
    """
    names = [s for s in SOURCES if s in lists]
    chunks = [lists[s].ids.astype(np.int64) for s in names]
    allids = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    primary_all = (
        np.concatenate([lists[s].scores for s in names]) if names else np.zeros(0, np.float64)
    )
    # first occurrence wins: a source earlier in SOURCES keeps its place
    _, first = np.unique(allids, return_index=True)
    keep = np.sort(first)
    ids = allids[keep]
    order = np.argsort(ids, kind="stable")
    ranks: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for s in SOURCES:
        rank = np.full(len(ids), np.inf)
        score = np.full(len(ids), np.inf)
        if s in lists and len(ids):
            own = lists[s].ids.astype(np.int64)
            where = order[np.searchsorted(ids, own, sorter=order)]
            own_ranks = lists[s].ranks
            rank[where] = np.arange(len(own), dtype=np.float64) if own_ranks is None else own_ranks
            score[where] = lists[s].scores
        fill = score_of.get(s)
        missing = ~np.isfinite(rank)
        if fill is not None and missing.any():
            score[missing] = fill(ids[missing])
        ranks[s] = rank
        scores[s] = score
    # which sources nominated each candidate, as a bit mask -> its label (e.g. "candidates+i2i")
    mask = sum(
        (np.isfinite(ranks[s]).astype(np.int64) << k for k, s in enumerate(SOURCES)),
        np.zeros(len(ids), np.int64),
    )
    source = _LABEL_ARRAY[mask].tolist()
    return Blend(ids, source, primary_all[keep].astype(np.float64), scores, ranks)
