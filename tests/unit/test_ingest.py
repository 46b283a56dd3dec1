"""The batch processor: invalid events become dead letters, valid ones around them apply."""

from __future__ import annotations

import base64
import json

from stream.events import EventKind, WatchEvent
from stream.ingest import Consumed, process_batch
from stream.state import Limits, Position, UserState, decode, encode


def consumed(offset: int, value: bytes, key: bytes = b"1") -> Consumed:
    return Consumed(EventKind.WATCH, key, value, Position("t.watch", 0, offset))


def watch(i: int) -> bytes:
    return WatchEvent(
        event_id=f"e{i}", user_id=1, item_id=i, ts=1000 + i, watch_seconds=1
    ).to_json()


def test_dead_letters_keep_the_exact_bytes_and_valid_neighbours_apply() -> None:
    items = [
        consumed(0, watch(0)),
        consumed(1, b"\x00garbage"),
        consumed(2, watch(2)),
        consumed(3, watch(2)),
    ]  # offset 3 re-sends event e2: a duplicate
    store: dict[int, bytes] = {}
    result = process_batch(
        items,
        lambda uid, _i: decode(store[uid]) if uid in store else None,
        limits=Limits(),
        now=2e9,
        max_bytes=1024,
        max_future_skew_s=60,
        worker="w",
    )
    assert [i for i, _ in result.dead_letters] == [1]
    letter = result.dead_letters[0][1]
    assert base64.b64decode(letter.raw_b64) == b"\x00garbage"
    assert (
        letter.offset == 1 and letter.source_topic == "t.watch" and "malformed JSON" in letter.error
    )
    state, index = result.writes[1]
    assert [w.item_id for w in state.history] == [0, 2] and index in (0, 2, 3)
    assert state.applied == {"t.watch/0": 3}
    assert result.outcomes[("watch", "applied")] == 2
    assert result.outcomes[("watch", "duplicate")] == 1
    assert result.outcomes[("watch", "dead_letter")] == 1


def test_a_whole_batch_replayed_writes_nothing_new() -> None:
    items = [consumed(i, watch(i)) for i in range(5)]
    store: dict[int, bytes] = {}

    def load(uid: int, _i: int) -> UserState | None:
        return decode(store[uid]) if uid in store else None

    first = process_batch(
        items, load, limits=Limits(), now=2e9, max_bytes=1024, max_future_skew_s=60
    )
    for uid, (st, _) in first.writes.items():
        store[uid] = encode(st)
    again = process_batch(
        items, load, limits=Limits(), now=2e9, max_bytes=1024, max_future_skew_s=60
    )
    assert again.writes == {}
    assert again.outcomes[("watch", "duplicate")] == 5


def test_unreadable_stored_state_is_dead_lettered_not_crashing() -> None:
    def load(uid: int, _i: int) -> UserState | None:
        return decode(json.dumps({"v": 99}).encode())

    result = process_batch(
        [consumed(0, watch(0))],
        load,
        limits=Limits(),
        now=2e9,
        max_bytes=1024,
        max_future_skew_s=60,
    )
    assert (
        result.writes == {} and "unsupported user-state version" in result.dead_letters[0][1].error
    )
