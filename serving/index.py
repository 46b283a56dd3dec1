"""Approximate nearest-neighbour retrieval in dot-product space (paper §3.1 "serving").

The candidate generator scores items by u · v_i, so retrieval is maximum inner product search
over the item embeddings: FAISS ``IndexFlatIP`` (exact) for small catalogues and an inverted
file (``IndexIVFFlat`` over inner product) for large ones. IVF was chosen over HNSW from the
recall/latency curve of ``watchnext bench serve`` on the 1M-item catalogue: at recall@100 ≥ 0.95
IVF answers in about half the time and builds in about half the time on this machine, and HNSW
over raw inner product stalls near 0.93 recall (README, "ANN index").

The index is built once per snapshot, off the event loop (by the trainer, which ships it inside
the checksummed snapshot, or by the worker's loader thread), and only read while serving; FAISS
search on a read-only index is thread-safe.

A shipped index is opaque bytes handed to native code; :mod:`serving.index_probe` decides
whether the worker may deserialize it or must rebuild it from the snapshot's item embeddings.

Shapes: N items, H embedding dim, B queries, K results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

EXACT_MAX_ITEMS = 50_000  # below this an exact scan is fast enough (measured in bench serve)
INDEX_FILE = "index.faiss"  # name of the prebuilt index inside a candidate snapshot


@dataclass(frozen=True)
class IndexConfig:
    """ANN parameters; defaults chosen from the curve ``watchnext bench serve`` prints.

    ``nlist`` 0 means 4·√N rounded to a power of two (4,096 lists for 1M items).
    """

    exact_max_items: int = EXACT_MAX_ITEMS
    nlist: int = 0
    nprobe: int = 32
    train_per_list: int = 64  # k-means training points per list (sampled, seeded)
    seed: int = 0

    def lists_for(self, n: int) -> int:
        if self.nlist:
            return self.nlist
        return int(2 ** round(math.log2(max(4 * math.sqrt(n), 1))))


class ItemIndex:
    """Inner-product index over [N, H] float32 item vectors; returns item ids, not rows."""

    def __init__(
        self,
        vectors: np.ndarray,
        item_ids: np.ndarray,
        config: IndexConfig | None = None,
        prebuilt: faiss.Index | None = None,
    ) -> None:
        config = config or IndexConfig()
        self.config = config
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        # how this index came to be: "built", "shipped" (deserialized) or "rebuilt" (fallback)
        self.origin = "shipped" if prebuilt is not None else "built"
        if prebuilt is not None:
            if prebuilt.ntotal != len(self.item_ids):
                raise ValueError(
                    f"prebuilt index holds {prebuilt.ntotal} items, vocabulary {len(item_ids)}"
                )
            self.index: faiss.Index = prebuilt
            self.dim = prebuilt.d
            self.exact = isinstance(prebuilt, faiss.IndexFlat)
            if not self.exact:
                faiss.extract_index_ivf(prebuilt).nprobe = config.nprobe
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(item_ids):
            raise ValueError("vectors must be [N, H] with one item id per row")
        self.dim = vectors.shape[1]
        self.exact = len(vectors) <= config.exact_max_items
        if self.exact:
            self.index = faiss.IndexFlatIP(self.dim)
        else:
            nlist = config.lists_for(len(vectors))
            quantizer = faiss.IndexFlatIP(self.dim)
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(config.seed)
            n_train = min(len(vectors), nlist * config.train_per_list)
            sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
            ivf.cp.seed = config.seed
            ivf.train(sample)
            ivf.nprobe = config.nprobe
            self._quantizer = quantizer  # keep the Python wrapper alive with the index
            self.index = ivf
        self.index.add(vectors)

    @classmethod
    def from_bytes(
        cls, data: bytes, item_ids: np.ndarray, config: IndexConfig | None = None
    ) -> ItemIndex:
        """Rebuild from :meth:`to_bytes` (FAISS's own binary format; no code is executed).

        Native deserialization trusts its input: bytes from anywhere but this process go through
        :func:`serving.index_probe.index_for_snapshot`, which checks and probes them first.
        """
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(np.zeros((0, 0), np.float32), item_ids, config, prebuilt=index)

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, H] -> (item ids [B, K], scores [B, K]); missing slots have id -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self))
        scores, rows = self.index.search(q, k)
        ids = np.where(rows >= 0, self.item_ids[np.clip(rows, 0, None)], -1)
        return ids, scores
