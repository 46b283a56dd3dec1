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


def write_shaped_ratings_csv(
    directory: Path, seed: int, users: int, items: int, interactions: int
) -> Path:
    """A ``ratings.csv`` of exactly ``interactions`` ratings by ``users`` users of ``items``
    items, long-tailed both ways (Zipf-like item popularity, lognormal history lengths, at
    least 3 per user) as public data sets are: the shape of a data set, not its content."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=1.6, sigma=0.9, size=users)
    lengths = np.maximum(3, np.round(lengths * (interactions - 3 * users) / lengths.sum()) + 3)
    lengths = lengths.astype(np.int64)
    while lengths.sum() != interactions:  # exact total; every user keeps at least 3
        diff = interactions - int(lengths.sum())
        pick = rng.integers(0, users, size=abs(diff))
        np.add.at(lengths, pick, 1 if diff > 0 else -1)
        lengths = np.maximum(lengths, 3)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    popularity /= popularity.sum()
    item_of = rng.permutation(items) + 1  # popularity rank -> movieId
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, users + 1):
        n = int(lengths[u - 1])
        picked = item_of[rng.choice(items, size=n, replace=False, p=popularity)]
        for k, item in enumerate(picked):
            rows.append(f"{u},{item},{int(rng.integers(1, 6))},{1000 + 10 * k + u}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ratings.csv"
    path.write_text("\n".join(rows) + "\n")
    return path
