"""A seeded, YouTube-like synthetic world with ground truth, generated as a stream.

Nothing per-user is held in memory: every user and item attribute is a pure function of
``(seed, id)`` (counter-based RNG streams), so 1M users × 1M items need only the per-topic item
tables (a few arrays of length N). Users are generated one after another; within a user, events
are in time order (what per-user state needs); users are interleaved in generation order.

World:
* items have a topic, a channel (channels belong to topics), a duration, an upload time spread
  over the window (so fresh uploads keep arriving) and a latent quality;
* popularity of an item at time t is ``quality · (1 + spike · exp(−age / decay))`` for
  ``age = t − upload ≥ 0`` and 0 before the upload: fresh uploads spike and decay (paper Fig. 4);
* users have demographics, a device, a region and a sparse topic-interest mixture;
* a session picks a topic from the user's interests, maybe searches (tokens from the topic's
  vocabulary), is shown a page of items (an impression), clicks some by ground-truth affinity and
  watches a fraction of the duration that grows with affinity and depends on device × duration
  (phones abandon long videos, TVs finish them); optionally, an item shown before and not
  watched is clicked less (``fatigue``).

Ground truth (:meth:`World.affinity`, :meth:`World.expected_watch_seconds`) is available for
evaluation without storing the events.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stream.events import (
    EventKind,
    ImpressionEvent,
    ProfileEvent,
    SearchEvent,
    ShownItem,
    UploadEvent,
    WatchEvent,
)

DAY = 86_400.0
DEVICES = ("web", "ios", "android", "tv")
REGIONS = ("US", "DE", "IN", "BR", "JP", "FR", "GB", "MX")
# watch fraction's β ∝ (duration / 10 min)^exponent: > 0 abandons long videos, < 0 finishes them
DEVICE_DURATION_EXPONENT = {"web": 0.0, "ios": 0.6, "android": 0.6, "tv": -0.6}


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of the world; everything else follows from ``seed``."""

    seed: int = 0
    n_users: int = 10_000
    n_items: int = 20_000
    n_topics: int = 40
    channels_per_topic: int = 25
    words_per_topic: int = 30
    start_ts: float = 1.7e9
    days: float = 30.0
    sessions_per_user: float = 6.0
    page_size: int = 10
    search_probability: float = 0.3
    spike: float = 8.0
    decay_days: float = 2.0
    candidates_per_pick: int = 24
    # Impression fatigue (paper §4.1: a video shown and not watched should be demoted on the
    # next page load): each earlier showing of an item to a user that did not lead to a watch
    # multiplies the click probability by this factor. 1.0 (off) keeps the published Table 1.
    fatigue: float = 1.0


class World:
    """The ground-truth world of a :class:`SynthConfig`."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = c = config
        rng = np.random.default_rng([c.seed, 0])
        self.item_topic = rng.integers(0, c.n_topics, c.n_items)
        self.item_channel = self.item_topic * c.channels_per_topic + rng.integers(
            0, c.channels_per_topic, c.n_items
        )
        self.item_duration = np.clip(rng.lognormal(math.log(600), 0.8, c.n_items), 30, 4 * 3600)
        # A third of the catalogue predates the window; the rest is uploaded during it.
        self.item_upload = c.start_ts + rng.uniform(-c.days / 2, c.days, c.n_items) * DAY
        self.item_quality = rng.pareto(1.5, c.n_items) + 0.1
        order = np.argsort(self.item_topic, kind="stable")
        bounds = np.searchsorted(self.item_topic[order], np.arange(c.n_topics + 1))
        self.topic_items = [order[bounds[t] : bounds[t + 1]] for t in range(c.n_topics)]
        self.topic_words = [
            [f"t{t}w{w}" for w in range(c.words_per_topic)] for t in range(c.n_topics)
        ]

    # --- users (pure functions of seed and user id) -------------------------------------------

    def _user_rng(self, user: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, 1, user])

    def user_interests(self, user: int) -> np.ndarray:
        """[T] topic mixture: a few topics dominate."""
        rng = self._user_rng(user)
        return rng.dirichlet(np.full(self.config.n_topics, 0.08))

    def user_profile(self, user: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.config.seed, 2, user])
        return {
            "age": int(rng.integers(13, 80)),
            "gender": str(rng.choice(["M", "F"])),
            "region": str(rng.choice(REGIONS)),
            "device": str(rng.choice(DEVICES)),
        }

    # --- ground truth ---------------------------------------------------------------------------

    def popularity(self, items: np.ndarray, t: float) -> np.ndarray:
        """Time-varying popularity (0 before upload; fresh uploads spike and decay)."""
        age = t - self.item_upload[items]
        fresh = 1.0 + self.config.spike * np.exp(
            -np.clip(age, 0, None) / (self.config.decay_days * DAY)
        )
        return np.where(age >= 0, self.item_quality[items] * fresh, 0.0)

    def affinity(self, user: int, items: np.ndarray) -> np.ndarray:
        """[K] in (0, 1): how much the user likes each item (topic interest × quality)."""
        interest = self.user_interests(user)[self.item_topic[items]]
        # Click-through stays low (paper: P is small) except for the user's dominant topics.
        logit = -3.5 + 3.0 * interest + 0.3 * np.log(self.item_quality[items])
        return 1.0 / (1.0 + np.exp(-logit))

    def watch_fraction_params(self, user: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Beta(α, β) of the fraction watched after a click.

        α grows with affinity; β carries a device × duration interaction (phones abandon long
        videos, TVs finish them), the kind of effect a ranker needs hidden layers to learn.
        """
        a = self.affinity(user, items)
        device = self.user_profile(user)["device"]
        gamma = DEVICE_DURATION_EXPONENT[device]
        beta = 2.0 * (self.item_duration[items] / 600.0) ** gamma
        return 1.0 + 6.0 * a, beta

    def expected_watch_seconds(self, user: int, items: np.ndarray) -> np.ndarray:
        """E[watch time | impression] = P(click) · E[fraction watched] · duration (exact)."""
        a = self.affinity(user, items)
        alpha, beta = self.watch_fraction_params(user, items)
        return a * alpha / (alpha + beta) * self.item_duration[items]

    # --- event stream -----------------------------------------------------------------------------

    def uploads(self) -> Iterator[tuple[EventKind, UploadEvent]]:
        """Every item's upload event (time order is not implied)."""
        for i in range(self.config.n_items):
            t = int(self.item_topic[i])
            yield (
                EventKind.UPLOAD,
                UploadEvent(
                    item_id=i,
                    ts=float(max(self.item_upload[i], 0.0)),
                    duration_seconds=float(self.item_duration[i]),
                    channel=f"c{int(self.item_channel[i])}",
                    title=f"video {i}",
                    tags=[f"topic{t}"],
                ),
            )

    def user_events(self, user: int) -> Iterator[tuple[EventKind, Any]]:
        """One user's profile, searches, impressions and watches, in time order."""
        c = self.config
        rng = np.random.default_rng([c.seed, 3, user])
        prof = self.user_profile(user)
        interests = self.user_interests(user)
        yield (
            EventKind.PROFILE,
            ProfileEvent(
                user_id=user,
                ts=c.start_ts,
                event_id=f"p{user}",
                age=prof["age"],
                gender=prof["gender"],
                region=prof["region"],
            ),
        )
        ignored: dict[int, int] = {}  # item -> earlier showings without a watch (fatigue)
        n_sessions = int(rng.poisson(c.sessions_per_user)) + 1
        times = np.sort(c.start_ts + rng.uniform(0, c.days * DAY, n_sessions))
        for s, t in enumerate(times):
            topic = int(rng.choice(c.n_topics, p=interests))
            if rng.random() < c.search_probability:
                words = rng.choice(self.topic_words[topic], size=int(rng.integers(1, 4)))
                yield (
                    EventKind.SEARCH,
                    SearchEvent(
                        event_id=f"s{user}-{s}",
                        user_id=user,
                        query=" ".join(words),
                        ts=float(t),
                        device=prof["device"],
                    ),
                )
            page, sources, scores = self._page(rng, topic, float(t))
            if len(page) == 0:
                continue
            request_id = f"q{user}-{s}"
            yield (
                EventKind.IMPRESSION,
                ImpressionEvent(
                    event_id=f"i{user}-{s}",
                    user_id=user,
                    request_id=request_id,
                    ts=float(t),
                    items=[
                        ShownItem(
                            item_id=int(i),
                            position=p,
                            source=sources[p],
                            score=round(float(scores[p]), 6),
                        )
                        for p, i in enumerate(page)
                    ],
                ),
            )
            aff = self.affinity(user, page)
            for p, (item, a) in enumerate(zip(page, aff, strict=True)):
                tired = c.fatigue ** ignored.get(int(item), 0)
                if rng.random() >= a * tired:
                    ignored[int(item)] = ignored.get(int(item), 0) + 1
                else:
                    fa, fb = self.watch_fraction_params(user, np.array([item]))
                    frac = float(np.clip(rng.beta(fa[0], fb[0]), 0.0, 1.0))
                    yield (
                        EventKind.WATCH,
                        WatchEvent(
                            event_id=f"w{user}-{s}-{p}",
                            user_id=user,
                            item_id=int(item),
                            ts=float(t) + 1 + p,
                            watch_seconds=round(frac * float(self.item_duration[item]), 1),
                            item_duration_seconds=float(self.item_duration[item]),
                            device=prof["device"],
                            country=prof["region"],
                            request_id=request_id,
                        ),
                    )

    def _page(
        self, rng: np.random.Generator, topic: int, t: float
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Logging policy: session-topic candidates (and a few random ones), by popularity.

        Returns (items, the source that nominated each: "topic" or "explore", each item's
        policy probability).
        """
        pool = self.topic_items[topic]
        empty = (np.zeros(0, dtype=np.int64), [], np.zeros(0))
        if len(pool) == 0:
            return empty
        k = self.config.candidates_per_pick
        cand = np.concatenate(
            [pool[rng.integers(0, len(pool), k)], rng.integers(0, self.config.n_items, k // 4)]
        )
        pop = self.popularity(cand, t)
        if pop.sum() <= 0:
            return empty
        size = min(self.config.page_size, int((pop > 0).sum()))
        p = pop / pop.sum()
        picked = rng.choice(len(cand), size=size, replace=False, p=p)
        sources = ["topic" if j < k else "explore" for j in picked]
        return cand[picked], sources, p[picked]

    def events(self) -> Iterator[tuple[EventKind, Any]]:
        """Uploads, then every user's events, generated lazily."""
        yield from self.uploads()
        for user in range(self.config.n_users):
            yield from self.user_events(user)

    def save_truth(self, path: str) -> None:
        """Per-item ground truth plus the config (user truth is recomputable from the seed)."""
        import json

        np.savez_compressed(
            path,
            config=np.array(json.dumps(asdict(self.config))),
            item_topic=self.item_topic,
            item_channel=self.item_channel,
            item_duration=self.item_duration,
            item_upload=self.item_upload,
            item_quality=self.item_quality,
        )
