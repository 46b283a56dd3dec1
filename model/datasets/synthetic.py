"""The synthetic world (:mod:`model.synth`) as per-user timelines with searches and context.

This is the offline view of the same events ``watchnext synth`` streams to Kafka: watches grouped
by second, searches tokenized exactly as the stream tokenizes them (unigrams + bigrams, one
function), and each user's profile and device as context. Unlike MovieLens it has searches and
devices, so the paper's Figure 6 can be reproduced with the search features.
"""

from __future__ import annotations

from typing import Any

from model.event_timelines import timeline_from_events
from model.examples import UserContext
from model.protocol import UserTimeline
from model.synth import SynthConfig, World


def synthetic_timelines(config: SynthConfig) -> tuple[dict[int, UserTimeline], UserContext]:
    """(timelines of every user with at least one watch, their context) for ``config``."""
    world = World(config)
    timelines: dict[int, UserTimeline] = {}
    attrs: dict[int, dict[str, Any]] = {}
    for user in range(config.n_users):
        timeline, attrs[user] = timeline_from_events(user, (e for _, e in world.user_events(user)))
        if timeline is not None:
            timelines[user] = timeline
    return timelines, UserContext.build(attrs)
