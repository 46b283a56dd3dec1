"""Feature vocabularies and encoders shared by training and serving.

* :class:`Vocab` maps raw ids (items, tokens, occupations...) to rows; the top-N by frequency
  are kept, row 0 is reserved for padding and out-of-vocabulary, whose embedding is zero
  (``padding_idx``), as in the paper (§4.1).
* :func:`powers` feeds a normalized continuous value together with its square and square root
  (paper §3.3: the network gets super- and sub-linear versions for free).
* Example age (§3.3) is the training-window end minus the event time, normalized by the window
  length; serving uses 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAD = 0


@dataclass
class Vocab:
    """Top-N ids by frequency -> rows 1..N; everything else -> 0 (zero embedding)."""

    ids: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._row = {v: i + 1 for i, v in enumerate(self.ids)}

    @classmethod
    def build(cls, values: Iterable[Any], max_size: int | None = None, min_count: int = 1) -> Vocab:
        """Most frequent first; ties broken by the value for determinism."""
        counts = Counter(values)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        kept = [v for v, c in ranked if c >= min_count][:max_size]
        return cls(kept)

    def __len__(self) -> int:
        """Rows including the padding / OOV row 0."""
        return len(self.ids) + 1

    def row(self, value: Any) -> int:
        return self._row.get(value, PAD)

    def rows(self, values: Sequence[Any]) -> list[int]:
        return [self._row.get(v, PAD) for v in values]

    def int_rows(self, values: np.ndarray) -> np.ndarray:
        """[C] int64 rows of integer ``values`` by binary search (a request's candidates in
        a few array operations instead of C dictionary reads); PAD for anything unknown."""
        values = np.asarray(values, dtype=np.int64)
        if not hasattr(self, "_sorted"):
            keys = [v for v in self.ids if isinstance(v, int | np.integer)]
            ids = np.array(keys, dtype=np.int64)
            rows = np.array([self._row[v] for v in keys], dtype=np.int64)
            order = np.argsort(ids, kind="stable")
            self._sorted = (ids[order], rows[order])
        ids, rows = self._sorted
        pos, hit = sorted_lookup(ids, values)
        return np.where(hit, rows[pos], PAD) if len(ids) else np.full(len(values), PAD)

    def to_json(self) -> list[Any]:
        return list(self.ids)

    def grown(self, values: Iterable[Any]) -> Vocab:
        """This vocabulary with the unseen ``values`` appended: existing rows keep their number,
        so a warm-started model keeps their embeddings (retraining, issue 6)."""
        known = set(self.ids)
        extra = []
        for v in values:
            if v not in known:
                known.add(v)
                extra.append(v)
        return Vocab(list(self.ids) + extra)


def sorted_lookup(keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``queries`` [C] sits in ascending ``keys`` [K]: (pos [C], hit [C] bool).

    ``pos`` indexes ``keys`` (and any array aligned with it) and is meaningful only where
    ``hit``; an empty ``keys`` gives no hits. The one binary-search lookup behind the request
    path's id → row, id → score and id → metadata reads.
    """
    queries = np.asarray(queries)
    if len(keys) == 0 or len(queries) == 0:
        return np.zeros(len(queries), dtype=np.int64), np.zeros(len(queries), dtype=bool)
    pos = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return pos, keys[pos] == queries


def member_of(ids: np.ndarray, members: np.ndarray) -> np.ndarray:
    """[C] bool: which ``ids`` are among ``members`` (int64, any order).

    np.isin sorts both arrays together on every call, ~70 µs for a request's few hundred ids;
    one sort of the members and a binary search is a tenth of that, and the request path asks
    this several times per request (watched filter, item-to-item ranks).
    """
    ordered = np.sort(np.asarray(members, dtype=np.int64))
    return sorted_lookup(ordered, np.asarray(ids, dtype=np.int64))[1]


def powers(x: np.ndarray) -> np.ndarray:
    """[..., 1] -> [..., 3]: x, x², √x for x already normalized to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.concatenate([x, x * x, np.sqrt(x)], axis=-1)


def pad_bags(bags: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """[B, L] int64, right-padded with 0 (PAD), truncated to the first ``length`` entries."""
    out = np.zeros((len(bags), length), dtype=np.int64)
    for r, bag in enumerate(bags):
        n = min(len(bag), length)
        out[r, :n] = bag[:n]
    return out
