"""Ranking features (paper §4.1), one code path for training and serving.

:func:`impression_features` turns what is known about a user *at impression time* (the same
per-user state the stream keeps in RocksDB: rolling watch history, impression counters, profile,
device) plus item metadata (from upload events) and each candidate's source and score into raw
features. Training builds that state by replaying the event log through the stream's own
transition (:mod:`model.ranking_data`); the worker passes its live state. Nothing here imports
Kafka or faust: the user is read through the small :class:`UserLike` protocol, which the
stream's ``UserState`` satisfies.

Shapes: C candidates, N = :data:`HISTORY_IDS` last watched ids, M = len(:data:`CONTINUOUS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from model.features import sorted_lookup
from model.item_table import ItemMeta, ItemTable, StackedItemTable

HISTORY_IDS = 20  # last N watched item ids fed to the ranker (sharing the item-id embedding)
CATEGORICAL = ("device", "gender", "region", "source")
# The candidate sources whose score and rank every candidate carries (paper Fig. 2: several
# sources, merged, ranked by one ranker): the neural generator and the item-to-item source.
SOURCES = ("candidates", "i2i")
# Every continuous feature, before quantile normalization. Absent values ("never") are +inf and
# normalize to the top of the range (1.0), which sorts them after every observed time.
CONTINUOUS = (
    "since_last_watch",  # seconds since the user's last watch
    "prev_impressions",  # times this item was shown to this user before
    "since_last_impression",  # seconds since it was last shown to this user
    "channel_watches",  # the user's watches (in the rolling history) from this item's channel
    "since_topic_watch",  # seconds since the user last watched this item's topic
    "item_age",  # seconds since the item's upload
    "item_duration",  # seconds
    "source_score",  # the candidate generator's score
    "user_age",  # years
)
# Features 0-8 are what rankers before the multi-source blend were trained on; an encoder
# without a stored feature list reads only these (model.ranking_encoding).
CONTINUOUS_V1 = CONTINUOUS
CONTINUOUS = (
    *CONTINUOUS_V1,
    # every source's score for every candidate, nominated by it or not (+inf: not computed)
    *(f"{s}_score" for s in SOURCES),
    # the candidate's rank in each source's own list (+inf: that source did not nominate it)
    *(f"{s}_rank" for s in SOURCES),
)


class WatchLike(Protocol):
    ts: float
    item_id: int
    watch_seconds: float


class CounterLike(Protocol):
    shown: int
    last_ts: float


class ProfileLike(Protocol):
    age: int | None
    gender: str | None
    region: str | None


class UserLike(Protocol):
    """What the ranker reads of a user (the stream's ``UserState`` has these attributes)."""

    @property
    def history(self) -> Sequence[WatchLike]: ...
    @property
    def impressions(self) -> Mapping[int, CounterLike]: ...
    @property
    def profile(self) -> ProfileLike | None: ...
    @property
    def device(self) -> str | None: ...


@dataclass(frozen=True)
class Candidate:
    """An item nominated for ranking: the source that nominated it and that source's score, plus
    (blended candidates) every source's score and the ranks it holds in the sources' lists."""

    item_id: int
    source: str
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)  # SOURCES name -> score
    ranks: Mapping[str, int] = field(default_factory=dict)  # SOURCES name -> 0-based rank


@dataclass(frozen=True)
class CandidateColumns:
    """C candidates as columns (what the serving merge builds): the same facts as C
    :class:`Candidate` records without a Python object per candidate."""

    ids: np.ndarray  # [C] int64
    source: Sequence[str]  # [C] the nominating source(s)
    score: np.ndarray  # [C] float64, the nominating source's score
    scores: Mapping[str, np.ndarray] = field(default_factory=dict)  # SOURCES name -> [C]
    ranks: Mapping[str, np.ndarray] = field(default_factory=dict)  # SOURCES name -> [C]

    @classmethod
    def of(cls, candidates: Sequence[Candidate]) -> CandidateColumns:
        return cls(
            np.array([c.item_id for c in candidates], dtype=np.int64),
            [c.source for c in candidates],
            np.array([c.score for c in candidates], dtype=np.float64),
            {s: _per_candidate(candidates, "scores", s) for s in SOURCES},
            {s: _per_candidate(candidates, "ranks", s) for s in SOURCES},
        )


def _per_candidate(candidates: Sequence[Candidate], attr: str, source: str) -> np.ndarray:
    return np.array(
        [getattr(c, attr).get(source, np.inf) for c in candidates], dtype=np.float64
    ).reshape(len(candidates))


@dataclass
class RawFeatures:
    """Raw (not yet encoded) features of C candidates of one request."""

    items: list[int]  # [C] candidate item ids
    history: list[int]  # [N] the user's last watched item ids, newest first
    categorical: dict[str, list[Any]]  # CATEGORICAL name -> [C] raw values
    continuous: np.ndarray  # [C, M] float64 in CONTINUOUS order, +inf = never


def impression_features(
    user: UserLike | None,
    candidates: Sequence[Candidate] | CandidateColumns,
    items: Mapping[int, ItemMeta] | ItemTable | StackedItemTable,
    now: float,
) -> RawFeatures:
    """Features of ``candidates`` for ``user`` at time ``now`` from state known before ``now``.

    ``user`` None is an unknown user (no history, no impressions, no profile). ``items`` is a
    mapping (training) or the serving snapshot's :class:`ItemTable`; candidates come as
    :class:`Candidate` records (logged impressions) or as the columns the serving merge builds,
    with every source's score and rank. Every per-candidate column is an array operation; the
    only per-item Python left is the impression-counter lookup (a dict in the user's state).
    """
    cols = (
        candidates if isinstance(candidates, CandidateColumns) else CandidateColumns.of(candidates)
    )
    ids = np.asarray(cols.ids, dtype=np.int64)
    n = len(ids)
    history = [w for w in (user.history if user is not None else ()) if w.ts < now]
    # never anything at or after the impression
    hist_ids = np.array([w.item_id for w in history], dtype=np.int64)
    hist_ts = np.array([w.ts for w in history], dtype=np.float64)
    impressions = user.impressions if user is not None else {}
    profile = user.profile if user is not None else None
    device = user.device if user is not None else None
    table = ItemTable.of(items, [*ids, *hist_ids]) if isinstance(items, Mapping) else items
    meta = table.columns(ids)
    seen = table.columns(hist_ids)
    inf = float("inf")
    counters = [impressions.get(i) for i in ids.tolist()] if impressions else [None] * n
    shown = np.array(
        [k.shown if k is not None and k.last_ts < now else 0.0 for k in counters], np.float64
    )
    last_shown = np.array(
        [k.last_ts if k is not None and k.last_ts < now else inf for k in counters], np.float64
    )
    with np.errstate(invalid="ignore"):
        columns = (
            np.full(n, now - hist_ts.max() if len(hist_ts) else inf),
            shown,
            np.where(np.isfinite(last_shown), now - last_shown, inf),
            _channel_watches(seen.channel, meta.channel),
            _since_topic_watch(seen.topic, hist_ts, meta.topic, now),
            np.where(np.isfinite(meta.upload_ts), np.maximum(now - meta.upload_ts, 0.0), inf),
            meta.duration,
            np.asarray(cols.score, dtype=np.float64),
            np.full(
                n, float(profile.age) if profile is not None and profile.age is not None else inf
            ),
            *(_source_column(n, cols.scores.get(s)) for s in SOURCES),
            *(_source_column(n, cols.ranks.get(s)) for s in SOURCES),
        )
    cats: dict[str, list[Any]] = {
        "device": [device] * n,
        "gender": [profile.gender if profile is not None else None] * n,
        "region": [profile.region if profile is not None else None] * n,
        "source": list(cols.source),
    }
    rows = np.stack(columns, axis=1).astype(np.float64).reshape(n, len(CONTINUOUS))
    recent = np.argsort(-hist_ts, kind="stable")[:HISTORY_IDS]  # newest first, ties in order
    return RawFeatures(ids.tolist(), hist_ids[recent].tolist(), cats, rows)


def _channel_watches(history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[C] how many history entries share each candidate's channel (0 for none)."""
    codes, counts = np.unique(history[history >= 0], return_counts=True)
    if len(codes) == 0:
        return np.zeros(len(candidates), dtype=np.float64)
    pos, hit = sorted_lookup(codes, candidates)  # codes are ≥ 0: a candidate's -1 never hits
    return np.where(hit, counts[pos], 0).astype(np.float64)


def _since_topic_watch(
    history: np.ndarray, ts: np.ndarray, candidates: np.ndarray, now: float
) -> np.ndarray:
    """[C] seconds since the user's latest watch of each candidate's topic (+inf: never)."""
    known = history >= 0
    if not known.any():
        return np.full(len(candidates), np.inf)
    topics, when = history[known], ts[known]
    order = np.lexsort((when, topics))  # by topic, latest last
    topics, when = topics[order], when[order]
    last = np.r_[topics[1:] != topics[:-1], True]
    codes, latest = topics[last], when[last]
    pos, hit = sorted_lookup(codes, candidates)  # codes are ≥ 0: a candidate's -1 never hits
    return np.where(hit, now - latest[pos], np.inf)


def _source_column(n: int, col: np.ndarray | None) -> np.ndarray:
    """[C] one source's score or rank column; +inf throughout where it was not computed."""
    return np.asarray(col, dtype=np.float64) if col is not None else np.full(n, np.inf)
