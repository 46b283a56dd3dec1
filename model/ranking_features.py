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
class ItemMeta:
    """Catalogue facts about an item, from its upload event."""

    channel: str | None = None
    topic: str | None = None
    upload_ts: float | None = None
    duration: float | None = None


_NO_META = ItemMeta()


@dataclass(frozen=True)
class Candidate:
    """An item nominated for ranking: the source that nominated it and that source's score, plus
    (blended candidates) every source's score and the ranks it holds in the sources' lists."""

    item_id: int
    source: str
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)  # SOURCES name -> score
    ranks: Mapping[str, int] = field(default_factory=dict)  # SOURCES name -> 0-based rank


@dataclass
class RawFeatures:
    """Raw (not yet encoded) features of C candidates of one request."""

    items: list[int]  # [C] candidate item ids
    history: list[int]  # [N] the user's last watched item ids, newest first
    categorical: dict[str, list[Any]]  # CATEGORICAL name -> [C] raw values
    continuous: np.ndarray  # [C, M] float64 in CONTINUOUS order, +inf = never


def impression_features(
    user: UserLike | None,
    candidates: Sequence[Candidate],
    items: Mapping[int, ItemMeta],
    now: float,
    source_scores: Mapping[str, np.ndarray] | None = None,
    source_ranks: Mapping[str, np.ndarray] | None = None,
) -> RawFeatures:
    """Features of ``candidates`` for ``user`` at time ``now`` from state known before ``now``.

    ``user`` None is an unknown user (no history, no impressions, no profile).
    ``source_scores`` / ``source_ranks`` ([C] per :data:`SOURCES` name, as the serving merge
    builds them) replace the per-candidate ``Candidate.scores`` / ``Candidate.ranks``.
    """
    history = list(user.history) if user is not None else []
    history = [w for w in history if w.ts < now]  # never anything at or after the impression
    impressions = user.impressions if user is not None else {}
    profile = user.profile if user is not None else None
    device = user.device if user is not None else None
    last_watch = max((w.ts for w in history), default=None)
    by_channel: dict[str, int] = {}
    last_topic: dict[str, float] = {}
    for w in history:
        meta = items.get(w.item_id)
        if meta is None:
            continue
        if meta.channel is not None:
            by_channel[meta.channel] = by_channel.get(meta.channel, 0) + 1
        if meta.topic is not None:
            last_topic[meta.topic] = max(last_topic.get(meta.topic, -np.inf), w.ts)
    inf = float("inf")
    n = len(candidates)
    metas = [items.get(c.item_id) or _NO_META for c in candidates]
    counters = [impressions.get(c.item_id) for c in candidates]
    shown = np.array(
        [k.shown if k is not None and k.last_ts < now else 0.0 for k in counters], np.float64
    )
    last_shown = np.array(
        [k.last_ts if k is not None and k.last_ts < now else inf for k in counters], np.float64
    )
    topic_ts = np.array(
        [last_topic.get(m.topic, -inf) if m.topic is not None else -inf for m in metas],
        np.float64,
    )
    upload = np.array([m.upload_ts if m.upload_ts is not None else inf for m in metas])
    with np.errstate(invalid="ignore"):
        columns = (
            np.full(n, now - last_watch if last_watch is not None else inf),
            shown,
            np.where(np.isfinite(last_shown), now - last_shown, inf),
            np.array([by_channel.get(m.channel, 0) if m.channel is not None else 0 for m in metas]),
            np.where(np.isfinite(topic_ts), now - topic_ts, inf),
            np.where(np.isfinite(upload), np.maximum(now - upload, 0.0), inf),
            np.array([m.duration if m.duration is not None else inf for m in metas]),
            np.array([c.score for c in candidates]),
            np.full(
                n, float(profile.age) if profile is not None and profile.age is not None else inf
            ),
            *(_source_column(candidates, s, source_scores, "scores") for s in SOURCES),
            *(_source_column(candidates, s, source_ranks, "ranks") for s in SOURCES),
        )
    cats: dict[str, list[Any]] = {
        "device": [device] * n,
        "gender": [profile.gender if profile is not None else None] * n,
        "region": [profile.region if profile is not None else None] * n,
        "source": [c.source for c in candidates],
    }
    rows = np.stack(columns, axis=1).astype(np.float64).reshape(n, len(CONTINUOUS))
    recent = sorted(history, key=lambda w: w.ts, reverse=True)[:HISTORY_IDS]
    return RawFeatures([c.item_id for c in candidates], [w.item_id for w in recent], cats, rows)


def _source_column(
    candidates: Sequence[Candidate],
    source: str,
    given: Mapping[str, np.ndarray] | None,
    attr: str,
) -> np.ndarray:
    """[C] one source's score or rank column: the given array, else read per candidate."""
    if given is not None:
        col = given.get(source)
        return (
            np.asarray(col, dtype=np.float64)
            if col is not None
            else np.full(len(candidates), np.inf)
        )
    return np.array(
        [getattr(c, attr).get(source, np.inf) for c in candidates], dtype=np.float64
    ).reshape(len(candidates))
