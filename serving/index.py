"""Approximate nearest-neighbour retrieval in dot-product space (paper §3.1 "serving").

The candidate generator scores items by u · v_i, so retrieval is maximum inner product search
over the item embeddings: FAISS ``IndexFlatIP`` (exact) for small catalogues and HNSW over inner
product for large ones. The index is built once per snapshot (off the event loop) and only read
while serving; FAISS search on a read-only index is thread-safe.

Shapes: N items, H embedding dim, B queries, K results.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

EXACT_MAX_ITEMS = 50_000  # below this an exact scan is fast enough (measured in bench serve)


@dataclass(frozen=True)
class IndexConfig:
    """HNSW parameters; chosen from the recall/latency curve of ``watchnext bench serve``."""

    exact_max_items: int = EXACT_MAX_ITEMS
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128


class ItemIndex:
    """Inner-product index over [N, H] float32 item vectors; returns item ids, not rows."""

    def __init__(
        self, vectors: np.ndarray, item_ids: np.ndarray, config: IndexConfig | None = None
    ) -> None:
        config = config or IndexConfig()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(item_ids):
            raise ValueError("vectors must be [N, H] with one item id per row")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.dim = vectors.shape[1]
        self.exact = len(vectors) <= config.exact_max_items
        if self.exact:
            self.index: faiss.Index = faiss.IndexFlatIP(self.dim)
        else:
            hnsw = faiss.IndexHNSWFlat(self.dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = config.ef_construction
            hnsw.hnsw.efSearch = config.ef_search
            self.index = hnsw
        self.index.add(vectors)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, H] -> (item ids [B, K], scores [B, K]); missing slots have id -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self))
        scores, rows = self.index.search(q, k)
        ids = np.where(rows >= 0, self.item_ids[np.clip(rows, 0, None)], -1)
        return ids, scores
