"""A seeded mix of user events (watch, search, impression, profile) for load and fault runs.

Used by ``watchnext bench chaos`` and the tests: ids are unique per (seed, index), timestamps
deliberately out of order (history is kept by event time), and a share of events is sent twice
in a row, as an at-least-once producer would.
"""

from __future__ import annotations

import random
from typing import Any

from stream.events import (
    EventKind,
    ImpressionEvent,
    ProfileEvent,
    SearchEvent,
    ShownItem,
    WatchEvent,
)

WORDS = ["cat", "dog", "space", "war", "love", "funny", "music", "live", "news", "cooking"]


def make_events(
    seed: int, users: int, n: int, *, duplicates: float = 0.02, t0: float = 1.6e9, start: int = 0
) -> list[tuple[EventKind, Any]]:
    """A seeded mix of watch/search/impression/profile events, with some exact re-sends."""
    rng = random.Random(seed)
    out: list[tuple[EventKind, Any]] = []
    for i in range(start, start + n):
        uid = rng.randrange(users)
        ts = t0 + rng.uniform(0, 10_000)  # out of order on purpose: history is kept by event time
        r = rng.random()
        ev: tuple[EventKind, Any]
        if r < 0.65:
            ev = (
                EventKind.WATCH,
                WatchEvent(
                    event_id=f"w{seed}-{i}",
                    user_id=uid,
                    item_id=rng.randrange(500),
                    ts=ts,
                    watch_seconds=round(rng.uniform(0, 3000), 2),
                    item_duration_seconds=3000.0,
                    device=rng.choice(["web", "tv", "ios"]),
                    country="DE",
                ),
            )
        elif r < 0.8:
            ev = (
                EventKind.SEARCH,
                SearchEvent(
                    event_id=f"s{seed}-{i}",
                    user_id=uid,
                    ts=ts,
                    query=" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))),
                ),
            )
        elif r < 0.95:
            items = rng.sample(range(40), rng.randint(1, 5))
            ev = (
                EventKind.IMPRESSION,
                ImpressionEvent(
                    event_id=f"i{seed}-{i}",
                    user_id=uid,
                    request_id=f"r{i}",
                    ts=ts,
                    items=[ShownItem(item_id=it, position=p) for p, it in enumerate(items)],
                ),
            )
        else:
            ev = (
                EventKind.PROFILE,
                ProfileEvent(
                    user_id=uid,
                    ts=ts,
                    event_id=f"p{seed}-{i}",
                    age=rng.randint(13, 80),
                    gender=rng.choice("MF"),
                    zip=f"{rng.randint(10000, 99999)}",
                ),
            )
        out.append(ev)
        if rng.random() < duplicates:
            out.append(ev)  # the producer sends the same event twice in a row
    return out
