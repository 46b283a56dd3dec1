"""A bounded write-through cache of decoded user states, in front of the ``users`` table.

Decoding a user's value on every event (and every request) was a fifth of the ingest agent's
time (py-spy, README "where the microseconds go"). The cache holds the decoded
:class:`~stream.state.UserState` of the users this worker touched last, keyed by *(partition,
key)* — faust keeps one RocksDB database per partition and reads through the current event's
partition first, so the pair names one stored value. Every write of the agents goes through
:meth:`StateCache.put` together with the table write, so a cached state is always the table's
value. The cache is emptied when partitions are revoked or assigned: a partition that comes
back may have been written by another worker meanwhile (its table then rebuilt from the
changelog), and a state cached before would be stale.

Pure Python, no faust: the agents pass a ``load`` callable that reads the table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from stream import metrics
from stream.state import UserState, decode

_HIT = metrics.STATE_CACHE.labels("hit")  # bound once: get() is on every event's path
_MISS = metrics.STATE_CACHE.labels("miss")


class StateCache:
    """LRU of decoded states; ``capacity`` 0 disables caching (every get decodes)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 0)
        self._states: OrderedDict[tuple[int, bytes], UserState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(
        self, partition: int, key: bytes, read: Callable[[bytes], bytes | None]
    ) -> UserState | None:
        """The state stored under ``key`` (None when there is none); ``read`` reads the table.

        Raises ValueError (from :func:`stream.state.decode`) for a stored value that cannot
        be read; nothing is cached then.
        """
        slot = (partition, key)
        state = self._states.get(slot)
        if state is not None:
            self._states.move_to_end(slot)
            _HIT.inc()
            return state
        _MISS.inc()
        raw = read(key)
        if raw is None:
            return None
        state = decode(raw)
        self._remember(slot, state)
        return state

    def put(self, partition: int, key: bytes, state: UserState) -> None:
        """Record what was just written to the table under ``key`` on ``partition``."""
        self._remember((partition, key), state)

    def clear(self) -> None:
        """Forget everything (partitions revoked or assigned)."""
        self._states.clear()

    def _remember(self, slot: tuple[int, bytes], state: UserState) -> None:
        if not self.capacity:
            return
        self._states[slot] = state
        self._states.move_to_end(slot)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)
