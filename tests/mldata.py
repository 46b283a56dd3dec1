"""Seeded random MovieLens-shaped data for model tests."""

from __future__ import annotations

import numpy as np

from model.datasets.movielens import MovieLens


def random_movielens(seed: int, n: int, users: int, items: int, seconds: int) -> MovieLens:
    """``n`` ratings of ``users`` users over ``items`` items in ``seconds`` distinct seconds."""
    rng = np.random.default_rng(seed)
    return MovieLens(
        rng.integers(1, users + 1, n),
        rng.integers(1, items + 1, n),
        np.ones(n, np.float32),
        rng.integers(0, seconds, n).astype(np.float64),
    )
