"""MovieLens as an event stream: the documented mapping from ratings to watch events.

Mapping (ML-100K has no watch times, devices or uploads):

* ``u.item`` -> one :class:`UploadEvent` per item at its release date (or, if unknown, one day
  before its first rating), ``duration_seconds`` = 5400 (a fixed 90 minutes, the same constant
  as the ranking proxy in ``evaluation.md``), channel = first genre, tags = genres.
* ``u.user`` -> one :class:`ProfileEvent` per user, one second before the user's first rating;
  region = the first digit of the US zip code (the zip prefix is the geography feature).
* each rating -> one :class:`WatchEvent` at the rating's timestamp with
  ``watch_seconds = rating / 5 * 5400`` (a 5-star rating = watched to the end),
  ``device = "web"``, ``country = "US"`` and a deterministic ``event_id``
  (``ml-<user>-<item>-<ts>``), so replaying the file twice changes nothing.

Events are emitted in time order (uploads and profiles first, then ratings by timestamp; ratings
that share a second keep the file's order, which no model may rely on).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model.datasets.movielens import load
from stream.events import EventKind, ProfileEvent, UploadEvent, WatchEvent

ITEM_DURATION_S = 5400.0


def watch_seconds(rating: float) -> float:
    """Watch time implied by a rating (see module docstring)."""
    return float(rating) / 5.0 * ITEM_DURATION_S


def movielens_events(path: str | Path, limit: int | None = None) -> Iterator[tuple[EventKind, Any]]:
    """Yield (kind, event) for a MovieLens directory, in the order described above."""
    data = load(path)
    order = np.argsort(data.timestamps, kind="stable")
    if limit is not None:
        order = order[:limit]
    first_ts: dict[int, float] = {}
    first_item_ts: dict[int, float] = {}
    for i in order:
        first_ts.setdefault(int(data.users_col[i]), float(data.timestamps[i]))
        first_item_ts.setdefault(int(data.items_col[i]), float(data.timestamps[i]))
    for item in data.items.values():
        if item.item_id not in first_item_ts and limit is not None:
            continue
        ts = (
            item.release_ts
            if item.release_ts is not None
            else first_item_ts.get(item.item_id, 0.0) - 86400
        )
        yield (
            EventKind.UPLOAD,
            UploadEvent(
                item_id=item.item_id,
                ts=max(0.0, ts),
                duration_seconds=ITEM_DURATION_S,
                channel=item.genres[0] if item.genres else None,
                title=item.title[:512],
                tags=list(item.genres),
            ),
        )
    for user in data.users.values():
        if user.user_id not in first_ts:
            continue
        yield (
            EventKind.PROFILE,
            ProfileEvent(
                user_id=user.user_id,
                ts=first_ts[user.user_id] - 1,
                event_id=f"ml-profile-{user.user_id}",
                age=user.age,
                gender=user.gender,
                zip=user.zip,
                region=(user.zip or "?")[:1],
                occupation=user.occupation,
            ),
        )
    for i in order:
        u, it, r, ts = (
            int(data.users_col[i]),
            int(data.items_col[i]),
            float(data.ratings[i]),
            float(data.timestamps[i]),
        )
        yield (
            EventKind.WATCH,
            WatchEvent(
                event_id=f"ml-{u}-{it}-{int(ts)}",
                user_id=u,
                item_id=it,
                ts=ts,
                watch_seconds=watch_seconds(r),
                item_duration_seconds=ITEM_DURATION_S,
                device="web",
                country="US",
            ),
        )
