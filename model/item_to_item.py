"""The item-to-item candidate source: items co-watched with what the user watched (paper Fig. 2,
"other candidate sources").

Learned from co-watches by the trainer and the retrainer, and shipped inside the candidate
snapshot as two checksummed tensors (so it is swapped with the index, never out of step with
it). The weights are EASE's closed form (Steck 2019) where its dense [N, N] inverse fits a
stated memory budget, and cosine neighbours (the sparse ItemKNN of :mod:`model.baselines`)
beyond. Either way only each source item's top ``K`` neighbours are kept, so the table is
[S, K] whatever the catalogue, and a user's scores are a sum of at most L·K weights:

    score(u, j) = Σ_{h ∈ history(u)} W[h, j]        (W truncated to K entries per row h)

Shapes: S source items (those with co-watches), K neighbours kept per source item, L history
items of one user, C candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.baselines import EASE, Interactions, ItemKNN, ease_bytes
from model.features import member_of, sorted_lookup
from model.protocol import UserTimeline

NEIGHBOURS = 200  # K: neighbours kept per source item
EASE_LAMBDA = 300.0  # evaluation.md's EASE row (λ = 300), chosen there on validation
DEFAULT_BUDGET_MB = 1024.0  # EASE's Gram matrix and inverse must fit this, else ItemKNN
TENSORS = ("i2i.items", "i2i.neighbours", "i2i.weights")  # names inside the candidate snapshot


@dataclass(frozen=True)
class UserScores:
    """One user's item-to-item scores over every item any of their history points at."""

    items: np.ndarray  # [P] int64 item ids, ascending
    scores: np.ndarray  # [P] float32

    def of(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """[C] scores of ``item_ids`` (0 for an item no history item points at)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(self.items) == 0:
            return np.zeros(len(ids), dtype=np.float32)
        pos, hit = sorted_lookup(self.items, ids)
        return np.where(hit, self.scores[pos], 0.0).astype(np.float32)

    def top(
        self, k: int, exclude: Iterable[int] | np.ndarray = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids [≤k], scores [≤k]) best first (ties by item id), ``exclude`` never among them;
        only items with a positive score are nominated."""
        keep = self.scores > 0
        banned = (
            exclude.astype(np.int64, copy=False)
            if isinstance(exclude, np.ndarray)
            else np.fromiter(exclude, dtype=np.int64)
        )
        if len(banned):
            keep &= ~member_of(self.items, banned)
        ids, scores = self.items[keep], self.scores[keep]
        if len(ids) > k:
            part = np.argpartition(-scores, k - 1)[:k]
            ids, scores = ids[part], scores[part]
        order = np.lexsort((ids, -scores))
        return ids[order], scores[order]


@dataclass(frozen=True)
class ItemToItem:
    """Top-K neighbour weights per source item (rows sorted by source item id)."""

    items: np.ndarray  # [S] int64 source item ids, ascending
    neighbours: np.ndarray  # [S, K] int64 neighbour item ids, -1 = empty slot
    weights: np.ndarray  # [S, K] float32
    method: str  # "ease" or "cosine", for the snapshot's metadata and the logs

    def __post_init__(self) -> None:
        s = len(self.items)
        if self.neighbours.shape != self.weights.shape or self.neighbours.shape[:1] != (s,):
            raise ValueError(
                f"item-to-item tables disagree: items [{s}], neighbours "
                f"{list(self.neighbours.shape)}, weights {list(self.weights.shape)}"
            )
        if s > 1 and not np.all(np.diff(self.items) > 0):
            raise ValueError("item-to-item source items must be strictly ascending")

    def user_scores(self, history: Sequence[int]) -> UserScores:
        """The scores every history item's neighbours get, summed (a history item counted once)."""
        hist = np.unique(np.asarray(history, dtype=np.int64))
        if len(self.items) == 0 or len(hist) == 0:
            return UserScores(np.zeros(0, np.int64), np.zeros(0, np.float32))
        pos, hit = sorted_lookup(self.items, hist)
        rows = pos[hit]
        ids = self.neighbours[rows].ravel()
        w = self.weights[rows].ravel()
        valid = ids >= 0
        uniq, inverse = np.unique(ids[valid], return_inverse=True)
        summed = np.bincount(inverse, weights=w[valid], minlength=len(uniq))
        return UserScores(uniq, summed.astype(np.float32))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The three tables as tensors for the candidate snapshot (:data:`TENSORS`)."""
        return {
            TENSORS[0]: torch.from_numpy(self.items.astype(np.int64)),
            TENSORS[1]: torch.from_numpy(self.neighbours.astype(np.int64)),
            TENSORS[2]: torch.from_numpy(self.weights.astype(np.float32)),
        }

    @classmethod
    def from_tensors(cls, t: Mapping[str, torch.Tensor], method: str) -> ItemToItem | None:
        """The source stored in a snapshot, or None for a snapshot written before it existed."""
        if TENSORS[0] not in t:
            return None
        return cls(
            t[TENSORS[0]].numpy().astype(np.int64),
            t[TENSORS[1]].numpy().astype(np.int64),
            t[TENSORS[2]].numpy().astype(np.float32),
            method,
        )


def interactions(timelines: Mapping[int, UserTimeline]) -> Interactions:
    """Every user's visible items as a binary user × item matrix (columns = sorted item ids)."""
    seen = sorted({i for t in timelines.values() for s in t.items for i in s})
    ids = np.asarray(seen, dtype=np.int64)
    index = {int(i): c for c, i in enumerate(ids)}
    users = sorted(timelines)
    indptr = [0]
    indices: list[int] = []
    for u in users:
        indices.extend(sorted({index[i] for s in timelines[u].items for i in s}))
        indptr.append(len(indices))
    return Interactions(users, ids, np.asarray(indptr, np.int64), np.asarray(indices, np.int64))


def _top_rows(dense_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns [R, k], values [R, k]) of each row's k largest entries, -1 where not positive."""
    k = min(k, dense_rows.shape[1])
    cols = np.argpartition(-dense_rows, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(dense_rows, cols, axis=1)
    cols = np.where(vals > 0, cols, -1)
    return cols, np.where(vals > 0, vals, 0.0)


def fit_item_to_item(
    timelines: Mapping[int, UserTimeline],
    budget_mb: float = DEFAULT_BUDGET_MB,
    neighbours: int = NEIGHBOURS,
    lam: float = EASE_LAMBDA,
) -> ItemToItem:
    """Learn the source from co-watches: EASE within ``budget_mb``, cosine neighbours beyond.

    Only positive weights are kept (a negative EASE weight can never nominate an item, and
    keeping it would let a long history push good items down by summing many small negatives).
    """
    x = interactions(timelines)
    n = x.shape[1]
    if n == 0:
        empty = np.zeros((0, 1), np.int64)
        return ItemToItem(np.zeros(0, np.int64), empty, np.zeros((0, 1), np.float32), "empty")
    if ease_bytes(n) / 2**20 <= budget_mb:
        weights = EASE(x, lam).b  # [N, N] float64, row h -> its weight for every item j
        cols, vals = _top_rows(weights, neighbours)
        del weights
        method = "ease"
    else:
        sim = ItemKNN(x, neighbours).sim  # sparse [N, N], score = X @ S: row h feeds column j
        rows_np, cols_np = sim.indices().numpy()
        vals_np = sim.values().numpy()
        k = min(neighbours, n)
        cols = np.full((n, k), -1, np.int64)
        vals = np.zeros((n, k), np.float64)
        order = np.lexsort((-vals_np, rows_np))  # by source row, best first
        rows_np, cols_np, vals_np = rows_np[order], cols_np[order], vals_np[order]
        starts = np.searchsorted(rows_np, np.arange(n))
        rank = np.arange(len(rows_np)) - starts[rows_np]
        keep = (rank < k) & (vals_np > 0)
        cols[rows_np[keep], rank[keep]] = cols_np[keep]
        vals[rows_np[keep], rank[keep]] = vals_np[keep]
        method = "cosine"
    has = (cols >= 0).any(axis=1)
    nb = np.where(cols >= 0, x.item_ids[np.maximum(cols, 0)], -1)
    return ItemToItem(x.item_ids[has], nb[has], vals[has].astype(np.float32), method)
