"""The decoded-state cache in front of the users table."""

from __future__ import annotations

from stream.state import UserState, encode
from stream.state_cache import StateCache


def _table(*states: UserState) -> tuple[dict[bytes, bytes], list[bytes]]:
    return {str(s.user_id).encode(): encode(s) for s in states}, []


def test_a_read_decodes_once_then_hits() -> None:
    table, reads = _table(UserState(user_id=1, device="web"))

    def read(key: bytes) -> bytes | None:
        reads.append(key)
        return table.get(key)

    cache = StateCache(10)
    first = cache.get(0, b"1", read)
    second = cache.get(0, b"1", read)
    assert first == UserState(user_id=1, device="web") and second is first
    assert reads == [b"1"]
    assert cache.get(0, b"2", read) is None and reads == [b"1", b"2"]  # misses are not cached


def test_writes_go_through_and_partitions_are_separate() -> None:
    cache = StateCache(10)
    new = UserState(user_id=1, n_watches=3)
    cache.put(2, b"1", new)
    assert cache.get(2, b"1", lambda k: None) is new
    assert cache.get(3, b"1", lambda k: None) is None  # another partition's database


def test_least_recently_used_is_evicted_and_clear_forgets() -> None:
    cache = StateCache(2)
    for uid in (1, 2):
        cache.put(0, str(uid).encode(), UserState(user_id=uid))
    cache.get(0, b"1", lambda k: None)  # 1 is now the most recent
    cache.put(0, b"3", UserState(user_id=3))
    assert len(cache) == 2
    assert cache.get(0, b"2", lambda k: None) is None
    assert cache.get(0, b"1", lambda k: None) == UserState(user_id=1)
    cache.clear()
    assert len(cache) == 0 and cache.get(0, b"1", lambda k: None) is None


def test_capacity_zero_caches_nothing() -> None:
    cache = StateCache(0)
    cache.put(0, b"1", UserState(user_id=1))
    assert len(cache) == 0
    assert cache.get(0, b"1", {b"1": encode(UserState(user_id=1))}.get) == UserState(user_id=1)
    assert len(cache) == 0
