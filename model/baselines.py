"""In-house baselines printed beside watchnext in ``eval candidates``: MostPop, ItemKNN, EASE.

They see exactly what the neural model sees (the visible timelines of the split) and score the
full catalogue, a chunk of users at a time (:func:`model.metrics.evaluate_chunks` keeps each
user's top 100 only).

Why sparse and chunked: a modest public data set in MovieLens layout (31,013 users, 23,715
items, 287,107 interactions) made the first, dense version — [users x items] scores and
[items x items] similarities in float64 — reach 24.3 GB resident before the kernel killed it.
Here the history is a sparse matrix, ItemKNN keeps its top neighbours per item as a sparse
matrix built a block of item columns at a time, and EASE, whose closed form needs a dense
[N, N] inverse, runs only where that fits the stated memory budget (:func:`ease_bytes`);
beyond it the sparse neighbour model is the item-to-item baseline.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from model.protocol import Split

USER_CHUNK = 1024  # users scored at once: [1024, N] float32 is 97 MB at N = 23,715
ITEM_CHUNK = 1024  # item columns of the co-occurrence matrix built at once


@dataclass(frozen=True)
class Interactions:
    """The visible history as a binary sparse user x item matrix (CSR arrays).

    Rows are ``users`` (sorted), columns ``item_ids``; ``indices[indptr[r]:indptr[r+1]]`` are
    row r's item columns.
    """

    users: list[int]
    item_ids: np.ndarray  # [N] item id of each column
    indptr: np.ndarray  # [U + 1]
    indices: np.ndarray  # [nnz] column of each interaction

    @classmethod
    def of(cls, split: Split, item_ids: np.ndarray) -> Interactions:
        index = {int(i): c for c, i in enumerate(item_ids)}
        users = sorted(split.targets)
        indptr = [0]
        indices: list[int] = []
        for u in users:
            cols = {index[i] for items in split.timelines[u].items for i in items if i in index}
            indices.extend(sorted(cols))
            indptr.append(len(indices))
        return cls(users, item_ids, np.asarray(indptr, np.int64), np.asarray(indices, np.int64))

    @classmethod
    def from_dense(cls, x: np.ndarray) -> Interactions:
        """From a small dense binary [U, N] matrix (rows are users 0..U-1, columns items 0..N-1)."""
        rows = [np.flatnonzero(r) for r in x]
        indptr = np.cumsum([0, *map(len, rows)])
        indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return cls(list(range(len(x))), np.arange(x.shape[1]), indptr, indices)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.users), len(self.item_ids)

    def _cells(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(row within the slice, column) of every interaction of rows ``start:stop``."""
        row = np.repeat(np.arange(stop - start), np.diff(self.indptr[start : stop + 1]))
        return row, self.indices[self.indptr[start] : self.indptr[stop]]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """[stop - start, N] float32 dense rows."""
        out = np.zeros((stop - start, self.shape[1]), dtype=np.float32)
        out[self._cells(start, stop)] = 1.0
        return out

    def sparse_rows(self, start: int, stop: int) -> torch.Tensor:
        """[stop - start, N] float32 sparse COO rows."""
        row, col = self._cells(start, stop)
        idx = torch.from_numpy(np.vstack([row, col]))
        values = torch.ones(len(col), dtype=torch.float32)
        shape = (stop - start, self.shape[1])
        return torch.sparse_coo_tensor(idx, values, shape, check_invariants=False).coalesce()

    def counts(self) -> np.ndarray:
        """[N] float32 visible interactions per item."""
        return np.bincount(self.indices, minlength=self.shape[1]).astype(np.float32)

    @cached_property
    def _transposed(self) -> tuple[np.ndarray, torch.Tensor]:
        """(user of every interaction, Xᵀ as a sparse [N, U] tensor): built once for all the
        column blocks of :meth:`gram_columns`."""
        n_users, n_items = self.shape
        user_of = self._cells(0, n_users)[0]
        xt = torch.sparse_coo_tensor(
            torch.from_numpy(np.vstack([self.indices, user_of])),
            torch.ones(len(self.indices)),
            (n_items, n_users),
            check_invariants=False,
        )
        return user_of, xt

    def gram_columns(self, start: int, stop: int) -> np.ndarray:
        """[N, stop - start] float32 block of XᵀX (exact: counts well below 2**24)."""
        user_of, xt = self._transposed
        mask = (self.indices >= start) & (self.indices < stop)
        block = torch.zeros(self.shape[0], stop - start)
        block[torch.from_numpy(user_of[mask]), torch.from_numpy(self.indices[mask] - start)] = 1.0
        return torch.sparse.mm(xt, block).numpy()


class MostPop:
    """Every user gets the items' visible interaction counts."""

    def __init__(self, x: Interactions) -> None:
        self.x = x
        self.counts = x.counts()

    def scores(self, start: int, stop: int) -> np.ndarray:
        return np.broadcast_to(self.counts, (stop - start, len(self.counts)))


class ItemKNN:
    """Cosine item-item similarity, each item keeping its top ``neighbours``; score = X @ S.

    S is sparse (at most ``neighbours`` entries per column), built ``ITEM_CHUNK`` columns at a
    time, so memory is O(N · neighbours), not O(N²).
    """

    def __init__(self, x: Interactions, neighbours: int = 200) -> None:
        self.x = x
        n = x.shape[1]
        norms = np.sqrt(x.counts()) + 1e-9
        rows, cols, vals = [], [], []
        k = min(neighbours, n)
        for start in range(0, n, ITEM_CHUNK):
            stop = min(start + ITEM_CHUNK, n)
            sim = x.gram_columns(start, stop) / norms[:, None] / norms[None, start:stop]
            sim[np.arange(start, stop), np.arange(stop - start)] = 0.0  # no self-similarity
            if k < n:
                top = np.argpartition(-sim, k - 1, axis=0)[:k]  # [k, c] rows kept per column
            else:
                top = np.broadcast_to(np.arange(n)[:, None], sim.shape)
            col = np.broadcast_to(np.arange(start, stop)[None, :], top.shape)
            v = np.take_along_axis(sim, top, axis=0)
            keep = v != 0.0
            rows.append(top[keep])
            cols.append(col[keep])
            vals.append(v[keep])
        idx = torch.from_numpy(np.vstack([np.concatenate(rows), np.concatenate(cols)]))
        values = torch.from_numpy(np.concatenate(vals))
        self.sim = torch.sparse_coo_tensor(idx, values, (n, n), check_invariants=False).coalesce()

    def scores(self, start: int, stop: int) -> np.ndarray:
        with warnings.catch_warnings():  # torch: "sparse CSR support is in beta" (used inside)
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse.mm(self.x.sparse_rows(start, stop), self.sim).to_dense().numpy()


def ease_bytes(n_items: int) -> int:
    """Peak bytes of EASE's closed form: the float64 Gram matrix and its inverse."""
    return 2 * 8 * n_items * n_items


class EASE:
    """EASE (Steck 2019): closed-form item-item weights B = I - P / diag(P),
    P = (XᵀX + λI)⁻¹, zero diagonal; score = X @ B. Needs :func:`ease_bytes` of memory."""

    def __init__(self, x: Interactions, lam: float = 300.0) -> None:
        self.x = x
        n = x.shape[1]
        gram = np.empty((n, n), dtype=np.float64)
        for start in range(0, n, ITEM_CHUNK):
            stop = min(start + ITEM_CHUNK, n)
            gram[:, start:stop] = x.gram_columns(start, stop)
        gram[np.diag_indices_from(gram)] += lam
        p = np.linalg.inv(gram)
        del gram
        p /= -np.diag(p)[None, :]
        np.fill_diagonal(p, 0.0)
        self.b = p

    def scores(self, start: int, stop: int) -> np.ndarray:
        return (self.x.rows(start, stop) @ self.b).astype(np.float32)


def chunks(model: MostPop | ItemKNN | EASE) -> Iterator[tuple[list[int], np.ndarray]]:
    """(users, [b, N] scores) for consecutive chunks of ``USER_CHUNK`` users."""
    users = model.x.users
    for start in range(0, len(users), USER_CHUNK):
        stop = min(start + USER_CHUNK, len(users))
        yield users[start:stop], model.scores(start, stop)


def ease_scores(x: np.ndarray, lam: float = 300.0) -> np.ndarray:
    """EASE scores of a small dense [U, N] matrix (every row scored; tests and examples)."""
    return EASE(Interactions.from_dense(x), lam).scores(0, len(x))
