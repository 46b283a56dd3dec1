"""The synthetic world (:mod:`model.synth`) as per-user timelines with searches and context.

This is the offline view of the same events ``watchnext synth`` streams to Kafka: watches grouped
by second, searches tokenized exactly as the stream tokenizes them (unigrams + bigrams, one
function), and each user's profile and device as context. Unlike MovieLens it has searches and
devices, so the paper's Figure 6 can be reproduced with the search features.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from model.examples import UserContext
from model.protocol import UserTimeline
from model.synth import SynthConfig, World
from stream.events import EventKind, ProfileEvent, SearchEvent, WatchEvent
from stream.state import tokenize


def synthetic_timelines(config: SynthConfig) -> tuple[dict[int, UserTimeline], UserContext]:
    """(timelines of every user with at least one watch, their context) for ``config``."""
    world = World(config)
    timelines: dict[int, UserTimeline] = {}
    attrs: dict[int, dict[str, Any]] = {}
    for user in range(config.n_users):
        by_second: dict[float, list[int]] = defaultdict(list)
        searches: list[tuple[float, tuple[str, ...]]] = []
        info: dict[str, Any] = {}
        for kind, event in world.user_events(user):
            if kind is EventKind.WATCH and isinstance(event, WatchEvent):
                by_second[event.ts].append(event.item_id)
                info["device"] = event.device
            elif kind is EventKind.SEARCH and isinstance(event, SearchEvent):
                searches.append((event.ts, tuple(tokenize(event.query))))
            elif kind is EventKind.PROFILE and isinstance(event, ProfileEvent):
                info.update(age=event.age, gender=event.gender, region=event.region)
        attrs[user] = info
        if by_second:
            secs = sorted(by_second)
            timelines[user] = UserTimeline(
                user,
                tuple(secs),
                tuple(tuple(sorted(by_second[s])) for s in secs),
                tuple(sorted(searches)),
            )
    return timelines, UserContext.build(attrs)
