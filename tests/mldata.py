"""Seeded random MovieLens-shaped data for model tests."""

from __future__ import annotations

from pathlib import Path

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


def write_ratings_csv(
    directory: Path,
    seed: int,
    users: int,
    items: int,
    per_user: tuple[int, int],
    stagger_users: bool = True,
) -> Path:
    """A ``ratings.csv`` (the ML-latest layout) of random ratings in ``directory``.

    Each user rates ``per_user`` [low, high) items ten seconds apart; with ``stagger_users`` the
    users' clocks are offset by their id so seconds rarely coincide across users.
    """
    rng = np.random.default_rng(seed)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, users + 1):
        for k in range(int(rng.integers(*per_user))):
            ts = 1000 + 10 * k + (u if stagger_users else 0)
            rows.append(f"{u},{rng.integers(1, items)},{rng.integers(1, 6)},{ts}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ratings.csv"
    path.write_text("\n".join(rows) + "\n")
    return path
