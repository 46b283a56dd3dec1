"""Vector refresh off the ingest path: users coalesced, refreshed in small slices.

The ingest agent used to recompute the vector of every user a batch touched before it took
the next batch — one forward pass over up to 2,000 users, during which no request could be
answered. Refreshing is only a cache warmer: a request whose user has no current vector
(:func:`serving.vectors.fingerprint` of the state it read differs) computes it itself, so a
request always sees its user's latest applied event whether or not the refresh ran yet. So
the agent only queues the new states here, and :meth:`VectorRefresher.run` refreshes them
``slice_users`` at a time, yielding to the event loop between slices. A user updated again
before its refresh is refreshed once, with the newest state; the event→vector histogram
still gets one observation per event (up to ``MAX_TS_PER_USER`` per user and refresh).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from stream.state import UserState

log = logging.getLogger(__name__)
MAX_TS_PER_USER = 64


class VectorRefresher:
    """Pending user states waiting for a vector refresh by ``serving`` (a ``Serving``)."""

    def __init__(self, serving: Any, slice_users: int = 64) -> None:
        self.serving = serving
        self.slice_users = max(int(slice_users), 1)
        self._pending: OrderedDict[int, tuple[UserState, list[float]]] = OrderedDict()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, updates: Iterable[tuple[UserState, list[float]]]) -> None:
        """Queue ``(new state, event timestamps)`` pairs; newer states replace pending ones."""
        for state, stamps in updates:
            old = self._pending.pop(state.user_id, None)
            kept = stamps if old is None else (old[1] + stamps)
            self._pending[state.user_id] = (state, kept[-MAX_TS_PER_USER:])
        if self._pending:
            self._wake.set()

    def refresh_some(self) -> int:
        """Refresh up to ``slice_users`` of the oldest pending users; returns how many."""
        take = []
        while self._pending and len(take) < self.slice_users:
            take.append(self._pending.popitem(last=False)[1])
        if take:
            self.serving.refresh([s for s, _ in take], [t for _, ts in take for t in ts])
        return len(take)

    def clear(self) -> None:
        """Drop what is pending (partitions revoked: those users may be served elsewhere)."""
        self._pending.clear()

    async def run(self) -> None:
        """Refresh forever, one slice per event-loop turn."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                try:
                    self.refresh_some()
                except Exception:  # derived data: never let the refresher die
                    log.exception("vector refresh failed")
                await asyncio.sleep(0)
