"""Seeded event mixes for tests, and the plain-Python recomputation of user state.

The recomputation deliberately does not call :func:`stream.state.apply`: it derives each field
directly from the list of distinct events (sort, count, take the last N), so a bug in the
incremental transition shows up as a difference.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from stream.events import (
    EventKind,
    ImpressionEvent,
    ProfileEvent,
    SearchEvent,
    ShownItem,
    WatchEvent,
)
from stream.state import Limits, tokenize

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


@dataclass
class Expected:
    """What a user's state must contain, recomputed from scratch."""

    history: list[tuple[float, int, float]]
    search_tokens: list[str]
    impressions: dict[int, tuple[int, float]]
    profile_ts: float | None
    profile_age: int | None
    n_watches: int
    n_searches: int
    n_impressions: int


def recompute(events: list[tuple[EventKind, Any]], limits: Limits) -> dict[int, Expected]:
    """Expected state per user from the distinct events (by event_id) in production order."""
    seen: set[str] = set()
    per_user: dict[int, list[Any]] = defaultdict(list)
    for _, ev in events:
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        per_user[ev.user_id].append(ev)
    out: dict[int, Expected] = {}
    for uid, evs in per_user.items():
        watches = [e for e in evs if isinstance(e, WatchEvent)]
        watches_sorted = sorted(watches, key=lambda e: e.ts)  # stable: ties keep arrival order
        searches = [e for e in evs if isinstance(e, SearchEvent)]
        tokens = [t for e in searches for t in tokenize(e.query)]
        impressions: dict[int, tuple[int, float]] = {}
        n_impr = 0
        for e in evs:
            if isinstance(e, ImpressionEvent):
                n_impr += 1
                for s in e.items:
                    c, last = impressions.get(s.item_id, (0, 0.0))
                    impressions[s.item_id] = (c + 1, max(last, e.ts))
        assert len(impressions) <= limits.impression_items, "test data must not hit eviction"
        profiles = [e for e in evs if isinstance(e, ProfileEvent)]
        best = None
        for p in profiles:  # newest ts wins; equal ts: the later one
            if best is None or p.ts >= best.ts:
                best = p
        out[uid] = Expected(
            history=[(w.ts, w.item_id, w.watch_seconds) for w in watches_sorted][
                -limits.history_length :
            ],
            search_tokens=tokens[-limits.search_tokens :],
            impressions=impressions,
            profile_ts=best.ts if best else None,
            profile_age=best.age if best else None,
            n_watches=len(watches),
            n_searches=len(searches),
            n_impressions=n_impr,
        )
    return out


def assert_states_match(states: dict[int, Any], expected: dict[int, Expected]) -> None:
    """Every expected user is present with exactly the recomputed content, and no other."""
    assert set(states) == set(expected), (
        f"users differ: missing {sorted(set(expected) - set(states))[:10]}, "
        f"extra {sorted(set(states) - set(expected))[:10]}"
    )
    for uid, exp in expected.items():
        st = states[uid]
        got = {
            "history": [tuple(w) for w in st.history],
            "search_tokens": list(st.search_tokens),
            "impressions": {k: (c.shown, c.last_ts) for k, c in st.impressions.items()},
            "profile_ts": st.profile.ts if st.profile else None,
            "profile_age": st.profile.age if st.profile else None,
            "n_watches": st.n_watches,
            "n_searches": st.n_searches,
            "n_impressions": st.n_impressions,
        }
        assert got == exp.__dict__, f"user {uid}: {got} != {exp.__dict__}"
