"""One user's events (the stream's records) as a training timeline and context attributes.

Shared by the synthetic world's offline view and the retrainer's training log, so both build
timelines exactly alike: watches grouped by second, searches tokenized with the stream's own
tokenizer, the latest non-empty profile fields and watch device as context.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from model.protocol import UserTimeline
from stream.events import ProfileEvent, SearchEvent, WatchEvent
from stream.state import tokenize

PROFILE_FIELDS = ("age", "gender", "occupation", "region")


def timeline_from_events(
    user: int, events: Iterable[Any]
) -> tuple[UserTimeline | None, dict[str, Any]]:
    """(the user's timeline, or None without watches; their context attributes)."""
    by_second: dict[float, list[int]] = defaultdict(list)
    searches: list[tuple[float, tuple[str, ...]]] = []
    info: dict[str, Any] = {}
    for e in events:
        if isinstance(e, WatchEvent):
            by_second[e.ts].append(e.item_id)
            if e.device:
                info["device"] = e.device
        elif isinstance(e, SearchEvent):
            searches.append((e.ts, tuple(tokenize(e.query))))
        elif isinstance(e, ProfileEvent):
            info.update(
                {k: getattr(e, k) for k in PROFILE_FIELDS if getattr(e, k, None) is not None}
            )
    if not by_second:
        return None, info
    secs = sorted(by_second)
    timeline = UserTimeline(
        user,
        tuple(secs),
        tuple(tuple(sorted(by_second[s])) for s in secs),
        tuple(sorted(searches)),
    )
    return timeline, info
