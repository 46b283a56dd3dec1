"""Read MovieLens in its published layouts, offline, from a local directory.

Supported: ``u.data`` + ``u.user`` + ``u.item`` (ML-100K, tab/pipe separated), ``ratings.dat`` +
``users.dat`` + ``movies.dat`` (ML-1M/10M, ``::`` separated) and ``ratings.csv`` (+ ``movies.csv``)
with a header (ML-latest, ML-20M/25M). Users and items are optional beyond ML-100K.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(frozen=True)
class User:
    """A MovieLens user's demographics."""

    user_id: int
    age: int | None = None
    gender: str | None = None
    occupation: str | None = None
    zip: str | None = None


@dataclass(frozen=True)
class Item:
    """A MovieLens item."""

    item_id: int
    title: str
    release_ts: float | None = None
    genres: tuple[str, ...] = ()


@dataclass
class MovieLens:
    """Ratings as parallel arrays (user, item, rating, ts) plus optional users and items."""

    users_col: np.ndarray
    items_col: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    users: dict[int, User] = field(default_factory=dict)
    items: dict[int, Item] = field(default_factory=dict)
    layout: str = "u.data"

    def __len__(self) -> int:
        return len(self.ratings)


class DatasetError(RuntimeError):
    """The directory does not hold a MovieLens layout we can read; the message says what's there."""


def _date_ts(text: str) -> float | None:
    try:
        return dt.datetime.strptime(text, "%d-%b-%Y").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def _load_ml100k(root: Path) -> MovieLens:
    raw = np.loadtxt(root / "u.data", dtype=np.int64, delimiter="\t")
    users: dict[int, User] = {}
    if (root / "u.user").exists():
        for line in (root / "u.user").read_text(encoding="latin-1").splitlines():
            uid, age, gender, occ, zipc = line.split("|")
            users[int(uid)] = User(int(uid), int(age), gender, occ, zipc)
    items: dict[int, Item] = {}
    if (root / "u.item").exists():
        for line in (root / "u.item").read_text(encoding="latin-1").splitlines():
            parts = line.split("|")
            flags = parts[5:]
            genres = tuple(g for g, f in zip(ML100K_GENRES, flags, strict=False) if f == "1")
            items[int(parts[0])] = Item(int(parts[0]), parts[1], _date_ts(parts[2]), genres)
    return MovieLens(
        raw[:, 0],
        raw[:, 1],
        raw[:, 2].astype(np.float32),
        raw[:, 3].astype(np.float64),
        users,
        items,
        "u.data",
    )


def _load_dat(root: Path) -> MovieLens:
    rows = [
        line.split("::")
        for line in (root / "ratings.dat").read_text(encoding="latin-1").splitlines()
        if line
    ]
    arr = np.array(rows, dtype=np.float64)
    users: dict[int, User] = {}
    if (root / "users.dat").exists():
        for line in (root / "users.dat").read_text(encoding="latin-1").splitlines():
            uid, gender, age, occ, zipc = line.split("::")
            users[int(uid)] = User(int(uid), int(age), gender, occ, zipc)
    items: dict[int, Item] = {}
    if (root / "movies.dat").exists():
        for line in (root / "movies.dat").read_text(encoding="latin-1").splitlines():
            mid, title, genres = line.split("::")
            items[int(mid)] = Item(int(mid), title, None, tuple(genres.split("|")))
    return MovieLens(
        arr[:, 0].astype(np.int64),
        arr[:, 1].astype(np.int64),
        arr[:, 2].astype(np.float32),
        arr[:, 3],
        users,
        items,
        "ratings.dat",
    )


def _load_csv(root: Path) -> MovieLens:
    with open(root / "ratings.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [
            (int(r["userId"]), int(r["movieId"]), float(r["rating"]), float(r["timestamp"]))
            for r in reader
        ]
    arr = np.array(rows, dtype=np.float64)
    items: dict[int, Item] = {}
    if (root / "movies.csv").exists():
        with open(root / "movies.csv", newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                items[int(r["movieId"])] = Item(
                    int(r["movieId"]), r["title"], None, tuple(r["genres"].split("|"))
                )
    return MovieLens(
        arr[:, 0].astype(np.int64),
        arr[:, 1].astype(np.int64),
        arr[:, 2].astype(np.float32),
        arr[:, 3],
        {},
        items,
        "ratings.csv",
    )


def load(path: str | Path) -> MovieLens:
    """Load whichever published layout ``path`` holds (a directory, or one of its rating files)."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    if (root / "u.data").exists():
        return _load_ml100k(root)
    if (root / "ratings.dat").exists():
        return _load_dat(root)
    if (root / "ratings.csv").exists():
        return _load_csv(root)
    listing = ", ".join(sorted(p.name for p in root.iterdir())[:10]) if root.is_dir() else "missing"
    raise DatasetError(
        f"{root}: no u.data, ratings.dat or ratings.csv (found: {listing}); "
        "pass --data pointing at a MovieLens directory"
    )
