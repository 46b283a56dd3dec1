"""Encoding raw ranking features into tensors: vocabularies and quantile normalization (§4.1).

* Categorical values map through vocabularies truncated to the top-N by frequency; unknown and
  absent values are row 0, a zero embedding. Embedding width grows with log(vocabulary).
* Continuous values are normalized through their cumulative distribution: quantiles fitted once
  on training data, linear interpolation between them, so x̃ ∈ [0, 1]; "never" (+inf) maps to 1.
  The network also gets x̃² and √x̃ (the ``powers`` ablation turns them off).

Shapes: R rows (candidates), N history ids, K categorical features, M continuous features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.features import Vocab, pad_bags
from model.ranking_features import (
    CATEGORICAL,
    CONTINUOUS,
    CONTINUOUS_V1,
    HISTORY_IDS,
    RawFeatures,
)


def embedding_dim(rows: int, scale: float = 4.0, lo: int = 2, hi: int = 64) -> int:
    """Width ∝ log2(vocabulary), clipped: 2 for a handful of values, ~43 for 1.7k, 64 for 60k+."""
    return int(min(hi, max(lo, round(scale * math.log2(max(rows, 2))))))


@dataclass
class QuantileNormalizer:
    """Per-column quantiles of the finite training values: [Q, M]."""

    quantiles: np.ndarray

    def __post_init__(self) -> None:
        # Interpolation knots per column, computed once (transform runs on every request).
        # Repeated quantiles (a point mass, e.g. "never shown before" = 0) collapse to one knot
        # at the middle of the CDF range they cover.
        grid = np.linspace(0, 1, self.quantiles.shape[0])
        self._knots: list[tuple[np.ndarray, np.ndarray]] = []
        for m in range(self.quantiles.shape[1]):
            values, inverse = np.unique(self.quantiles[:, m], return_inverse=True)
            self._knots.append((values, np.bincount(inverse, grid) / np.bincount(inverse)))

    @classmethod
    def fit(cls, x: np.ndarray, n: int = 101) -> QuantileNormalizer:
        qs = np.zeros((n, x.shape[1]))
        for m in range(x.shape[1]):
            col = x[:, m][np.isfinite(x[:, m])]
            qs[:, m] = np.quantile(col, np.linspace(0, 1, n)) if len(col) else np.linspace(0, 1, n)
        return cls(qs)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """[R, M] raw -> [R, M] in [0, 1] (linear interpolation of the empirical CDF).

        +inf ("never") maps to 1 and -inf to 0.
        """
        out = np.empty(x.shape, dtype=np.float64)
        for m, (values, mid) in enumerate(self._knots):
            col = x[:, m]
            finite = np.isfinite(col)
            if len(values) == 1:
                level = np.where(col < values[0], 0.0, np.where(col > values[0], 1.0, 0.5))
            else:
                level = np.interp(np.where(finite, col, 0.0), values, mid, left=0.0, right=1.0)
            out[:, m] = np.where(finite, level, np.where(col > 0, 1.0, 0.0))
        return out

    def to_json(self) -> list[list[float]]:
        return self.quantiles.tolist()


@dataclass
class Encoder:
    """Vocabularies and normalizer fitted on training rows; applied identically at serving."""

    items: Vocab
    vocabs: dict[str, Vocab]
    normalizer: QuantileNormalizer
    # The continuous features this encoder (and its ranker) was fitted on, by name: a ranker
    # trained before a feature was added keeps reading only its own columns.
    continuous: tuple[str, ...] = CONTINUOUS

    def __post_init__(self) -> None:
        unknown = [n for n in self.continuous if n not in CONTINUOUS]
        if unknown:
            raise ValueError(f"ranker encoder names unknown continuous features {unknown}")
        if self.normalizer.quantiles.shape[1] != len(self.continuous):
            raise ValueError(
                f"ranker encoder: {self.normalizer.quantiles.shape[1]} quantile columns for "
                f"{len(self.continuous)} continuous features"
            )
        self._columns = np.array([CONTINUOUS.index(n) for n in self.continuous], dtype=np.int64)

    @classmethod
    def fit(
        cls, raws: Sequence[RawFeatures], max_items: int | None = None, min_count: int = 1
    ) -> Encoder:
        """Fit on training rows; items seen fewer than ``min_count`` times stay OOV (row 0)."""
        items = Vocab.build(
            (i for r in raws for i in [*r.items, *r.history]),
            max_size=max_items,
            min_count=min_count,
        )
        vocabs = {
            n: Vocab.build(v for r in raws for v in r.categorical[n] if v is not None)
            for n in CATEGORICAL
        }
        cont = (
            np.concatenate([r.continuous for r in raws]) if raws else np.zeros((0, len(CONTINUOUS)))
        )
        # a feature never observed in training (every value "never", e.g. the item-to-item
        # score in logs of a single-source worker) carries nothing: it is left out
        kept = [m for m in range(len(CONTINUOUS)) if np.isfinite(cont[:, m]).any()] or [0]
        names = tuple(CONTINUOUS[m] for m in kept)
        return cls(items, vocabs, QuantileNormalizer.fit(cont[:, kept]), names)

    def cat_sizes(self) -> dict[str, int]:
        return {n: len(self.vocabs[n]) for n in CATEGORICAL}

    def encode(self, raws: Sequence[RawFeatures], powers: bool = True) -> Batch:
        """Stack the candidates of several requests into one batch."""
        items = self.items.int_rows(np.fromiter((i for r in raws for i in r.items), np.int64))
        # the history is per request, not per candidate: pad once, repeat the rows
        per_request = pad_bags([self.items.rows(r.history) for r in raws], HISTORY_IDS)
        history = np.repeat(per_request, [len(r.items) for r in raws], axis=0)
        cats = np.zeros((len(items), len(CATEGORICAL)), dtype=np.int64)
        for k, name in enumerate(CATEGORICAL):
            vocab = self.vocabs[name]
            memo: dict[Any, int] = {}  # a column has few distinct values (often one)
            start = 0
            for r in raws:
                values = r.categorical[name]
                end = start + len(values)
                if values and values.count(values[0]) == len(values):  # one value (device...)
                    v = values[0]
                    cats[start:end, k] = memo[v] if v in memo else memo.setdefault(v, vocab.row(v))
                else:
                    cats[start:end, k] = [
                        memo[v] if v in memo else memo.setdefault(v, vocab.row(v)) for v in values
                    ]
                start = end
        raw = (
            np.concatenate([r.continuous for r in raws]) if raws else np.zeros((0, len(CONTINUOUS)))
        )
        x = self.normalizer.transform(raw[:, self._columns])
        if powers:
            x = np.concatenate([x, x * x, np.sqrt(x)], axis=1)
        return Batch(
            torch.from_numpy(items),
            torch.from_numpy(history),
            torch.from_numpy(cats),
            torch.from_numpy(x.astype(np.float32)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.items.to_json(),
            "vocabs": {n: v.to_json() for n, v in self.vocabs.items()},
            "quantiles": self.normalizer.to_json(),
            "continuous": list(self.continuous),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Encoder:
        return cls(
            Vocab(doc["items"]),
            {n: Vocab(v) for n, v in doc["vocabs"].items()},
            QuantileNormalizer(np.asarray(doc["quantiles"], dtype=np.float64)),
            tuple(doc.get("continuous", CONTINUOUS_V1)),
        )


@dataclass
class Batch:
    """Encoded rows: items [R], history [R, N], cats [R, K], cont [R, M or 3M]."""

    items: torch.Tensor
    history: torch.Tensor
    cats: torch.Tensor
    cont: torch.Tensor

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def select(self, idx: torch.Tensor) -> Batch:
        return Batch(self.items[idx], self.history[idx], self.cats[idx], self.cont[idx])
