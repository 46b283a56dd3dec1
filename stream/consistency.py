"""What every user's state must be, recomputed from the input events; and how far off it is.

The recomputation deliberately does not call :func:`stream.state.apply`: it derives each field
directly from the list of distinct events (sort, count, take the last N), so a bug in the
incremental transition shows up as a difference. :func:`discrepancies` sorts the differences
into lost effects (an event counted fewer times than it was sent), duplicated effects (counted
more often) and wrong state (a user whose content differs for any other reason) — the three
numbers a fault-injection run must bring back as zero.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from stream.events import (
    EventKind,
    ImpressionEvent,
    ProfileEvent,
    SearchEvent,
    WatchEvent,
)
from stream.state import Limits, tokenize


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
    watched: list[int]  # distinct watched items, sorted (the state keeps them by arrival)
    # other impression counters the state may hold instead: a request answered twice (its
    # worker killed after the answer and its impression reached the broker, before its state
    # write did) publishes two versions of one impression under one event id, and the state
    # counts exactly one of them, not necessarily the first
    impressions_also: list[dict[int, tuple[int, float]]] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """The content to compare with :func:`state_fields`."""
        return {k: v for k, v in self.__dict__.items() if k != "impressions_also"}

    def matches(self, got: dict[str, Any]) -> bool:
        """Whether a stored state's :func:`state_fields` is this content."""
        want = self.fields()
        if got == want:
            return True
        return any(got == {**want, "impressions": alt} for alt in self.impressions_also)


MAX_IMPRESSION_ALTERNATIVES = 256


def _counters(impressions: list[Any]) -> dict[int, tuple[int, float]]:
    counters: dict[int, tuple[int, float]] = {}
    for e in impressions:
        for s in e.items:
            c, last = counters.get(s.item_id, (0, 0.0))
            counters[s.item_id] = (c + 1, max(last, e.ts))
    return counters


def _impression_content(e: Any) -> tuple[float, tuple[int, ...]]:
    return e.ts, tuple(s.item_id for s in e.items)


def recompute(events: list[tuple[EventKind, Any]], limits: Limits) -> dict[int, Expected]:
    """Expected state per user from the distinct events (by event_id) in production order."""
    seen: set[str] = set()
    per_user: dict[int, list[Any]] = defaultdict(list)
    versions: dict[str, list[Any]] = {}  # impression event id -> its distinct versions
    for _, ev in events:
        if ev.event_id in seen:
            if isinstance(ev, ImpressionEvent):
                known = versions.setdefault(ev.event_id, [])
                if _impression_content(ev) not in map(_impression_content, known):
                    known.append(ev)
            continue
        seen.add(ev.event_id)
        per_user[ev.user_id].append(ev)
        if isinstance(ev, ImpressionEvent):
            versions[ev.event_id] = [ev]
    out: dict[int, Expected] = {}
    for uid, evs in per_user.items():
        watches = [e for e in evs if isinstance(e, WatchEvent)]
        watches_sorted = sorted(watches, key=lambda e: e.ts)  # stable: ties keep arrival order
        searches = [e for e in evs if isinstance(e, SearchEvent)]
        searches_sorted = sorted(searches, key=lambda e: e.ts)  # stable, like the history
        tokens = [t for e in searches_sorted for t in tokenize(e.query)]
        shown = [e for e in evs if isinstance(e, ImpressionEvent)]
        n_impr = len(shown)
        impressions = _counters(shown)
        choices = [versions[e.event_id] for e in shown]
        alternatives = [
            _counters(list(pick))
            for pick in itertools.islice(
                itertools.product(*choices), 1, MAX_IMPRESSION_ALTERNATIVES + 1
            )
        ]
        if any(len(c) > limits.impression_items for c in [impressions, *alternatives]):
            raise ValueError(f"user {uid}: more impressed items than the state keeps (eviction)")
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
            watched=_watched(watches, limits, uid),
            impressions_also=[a for a in alternatives if a != impressions],
        )
    return out


def state_fields(st: Any) -> dict[str, Any]:
    """A stored :class:`stream.state.UserState` in :class:`Expected`'s shape."""
    return {
        "history": [tuple(w) for w in st.history],
        "search_tokens": list(st.search_tokens),
        "impressions": {k: (c.shown, c.last_ts) for k, c in st.impressions.items()},
        "profile_ts": st.profile.ts if st.profile else None,
        "profile_age": st.profile.age if st.profile else None,
        "n_watches": st.n_watches,
        "n_searches": st.n_searches,
        "n_impressions": st.n_impressions,
        "watched": sorted(st.watched),
    }


def _watched(watches: list[Any], limits: Limits, uid: int) -> list[int]:
    distinct = sorted({w.item_id for w in watches})
    if len(distinct) > limits.watched_items:
        raise ValueError(f"user {uid}: more watched items than the state keeps (eviction)")
    return distinct


@dataclass
class Discrepancies:
    """Counts of what went wrong, each zero in a correct run."""

    users: int  # users checked
    lost: int  # effects missing: events counted fewer times than sent, or users missing
    duplicated: int  # effects applied more than once
    wrong_state: int  # users whose state differs from the recomputation in any other way
    extra_users: int  # users with state but no input event
    examples: list[str]


_COUNTS = ("n_watches", "n_searches", "n_impressions")


def discrepancies(states: dict[int, Any], expected: dict[int, Expected]) -> Discrepancies:
    """Compare stored states with the recomputation; sort the differences into kinds."""
    lost = duplicated = wrong = 0
    examples: list[str] = []
    for uid, exp in expected.items():
        st = states.get(uid)
        want = exp.fields()
        if st is None:
            lost += sum(want[k] for k in _COUNTS) + (exp.profile_ts is not None)
            examples.append(f"user {uid}: no state")
            continue
        got = state_fields(st)
        if exp.matches(got):
            continue
        miss = sum(max(want[k] - got[k], 0) for k in _COUNTS)
        extra = sum(max(got[k] - want[k], 0) for k in _COUNTS)
        lost += miss
        duplicated += extra
        if not miss and not extra:
            wrong += 1
        if len(examples) < 5:
            diff = sorted(k for k in want if got[k] != want[k])
            examples.append(f"user {uid}: differs in {diff}")
    extra_users = sorted(set(states) - set(expected))
    examples += [f"user {u}: state without input" for u in extra_users[:3]]
    return Discrepancies(
        users=len(expected),
        lost=lost,
        duplicated=duplicated,
        wrong_state=wrong + len(extra_users),
        extra_users=len(extra_users),
        examples=examples[:10],
    )
