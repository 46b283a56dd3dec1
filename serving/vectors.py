"""User vectors refreshed on every event, kept per worker with the snapshot version.

A vector is derived data: a pure function of the user's state and the candidate snapshot. The
worker recomputes it whenever an event changes the state and keeps it in a bounded in-memory
map, tagged with the snapshot version and a fingerprint of the state it came from. A request
uses it only when both still match; otherwise (a restart, a rebalance, a new snapshot, an event
not yet refreshed) it recomputes, so a stale vector is never served and nothing needs a
changelog.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from stream.state import UserState

Fingerprint = tuple[Any, ...]


def fingerprint(state: UserState | None) -> Fingerprint:
    """What the candidate vector depends on: history, search tokens, profile, device."""
    if state is None:
        return ()
    last = state.history[-1] if state.history else None
    return (
        state.n_watches,
        state.n_searches,
        len(state.history),
        last,
        state.search_tokens[-1] if state.search_tokens else None,
        state.profile.ts if state.profile else None,
        state.device,
    )


class VectorCache:
    """user id -> (snapshot version, state fingerprint, vector [H]); least recently used out."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._data: OrderedDict[int, tuple[str, Fingerprint, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def put(self, user: int, version: str, fp: Fingerprint, vector: np.ndarray) -> None:
        self._data[user] = (version, fp, vector)
        self._data.move_to_end(user)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def get(self, user: int, version: str, fp: Fingerprint) -> np.ndarray | None:
        hit = self._data.get(user)
        if hit is None or hit[0] != version or hit[1] != fp:
            return None
        self._data.move_to_end(user)
        return hit[2]
