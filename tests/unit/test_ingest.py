"""The batch processor: invalid events become dead letters, valid ones around them apply."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from stream.contract import EventRules
from stream.events import MAX_REASON_CHARS, EventKind, UploadEvent, WatchEvent
from stream.ingest import Consumed, process_batch, raw_dead_letter, reason_class
from stream.state import Limits, Position, UserState, decode, encode

RULES = EventRules(max_bytes=1024, max_future_skew_s=60)


def consumed(offset: int, value: bytes, key: bytes | None = b"1") -> Consumed:
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
        rules=RULES,
        now=2e9,
        worker="w",
    )
    assert [i for i, _ in result.dead_letters] == [1]
    letter = result.dead_letters[0][1]
    assert base64.b64decode(letter.raw_b64) == b"\x00garbage" and not letter.raw_truncated
    assert letter.raw_bytes == 8 and letter.raw_sha256 == hashlib.sha256(b"\x00garbage").hexdigest()
    assert (
        letter.offset == 1 and letter.source_topic == "t.watch" and "malformed JSON" in letter.error
    )
    state, index = result.writes[1]
    assert [w.item_id for w in state.history] == [0, 2] and index in (0, 2, 3)
    # no commit known: every offset the user's state took is kept (the re-send at 3 too)
    assert state.applied == {} and state.applied_above == {"t.watch/0": (0, 2, 3)}
    assert result.outcomes[("watch", "applied")] == 2
    assert result.outcomes[("watch", "duplicate")] == 1
    assert result.outcomes[("watch", "dead_letter")] == 1
    assert result.reasons[("watch", "malformed_json")] == 1


def test_a_whole_batch_replayed_writes_nothing_new() -> None:
    items = [consumed(i, watch(i)) for i in range(5)]
    store: dict[int, bytes] = {}

    def load(uid: int, _i: int) -> UserState | None:
        return decode(store[uid]) if uid in store else None

    first = process_batch(items, load, limits=Limits(), rules=RULES, now=2e9)
    for uid, (st, _) in first.writes.items():
        store[uid] = encode(st)
    again = process_batch(items, load, limits=Limits(), rules=RULES, now=2e9)
    assert again.writes == {}
    assert again.outcomes[("watch", "duplicate")] == 5


def test_unreadable_stored_state_is_dead_lettered_not_crashing() -> None:
    def load(uid: int, _i: int) -> UserState | None:
        return decode(json.dumps({"v": 99}).encode())

    result = process_batch([consumed(0, watch(0))], load, limits=Limits(), rules=RULES, now=2e9)
    assert (
        result.writes == {} and "unsupported user-state version" in result.dead_letters[0][1].error
    )
    assert result.reasons[("watch", "state")] == 1


def test_contract_labels_are_counted() -> None:
    ms = json.loads(watch(1))
    ms["ts"] = 1794315522350
    items = [
        consumed(0, watch(0), key=None),
        consumed(1, watch(1), key=b"2"),
        consumed(2, json.dumps(ms).encode()),
        consumed(3, b'{"event_id": "a", "event_id": "b"}'),
        Consumed(
            EventKind.UPLOAD,
            b"1",
            UploadEvent(item_id=1, ts=1, duration_seconds=1).to_json(),
            Position("t.upload", 0, 0),
        ),
    ]
    result = process_batch(items, lambda _u, _i: None, limits=Limits(), rules=RULES, now=2e9)
    assert [i for i, _ in result.dead_letters] == [0, 1, 2, 3, 4]
    assert {label for _, label in result.reasons} == {
        "key_missing",
        "key_mismatch",
        "ms_timestamp",
        "duplicate_json_key",
        "kind",
    }


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("malformed JSON: Expecting value at line 1 column 1", "malformed_json"),
        ("duplicate JSON key 'a'", "duplicate_json_key"),
        ("unsupported schema_version 2 (supported: 1)", "schema_version"),
        ("payload of 5000 bytes exceeds the 4096-byte limit", "oversize"),
        ("ts 2000000000 is 300000000s in the future (limit 300s)", "future_timestamp"),
        ("ts 1794315522350 looks like milliseconds: seconds expected (...)", "ms_timestamp"),
        ("sent_ts 1794315522350 looks like milliseconds: seconds expected (...)", "ms_timestamp"),
        (
            "message key missing: send the decimal user_id (e.g. b'5') as the Kafka key",
            "key_missing",
        ),
        ("message key b'6' does not match id 5: key must be the decimal user_id", "key_mismatch"),
        ("bounds: watch_seconds 90000 is over the 86400 s limit", "bounds"),
        ("empty message value (tombstone) on an event topic", "empty"),
        ("user-state of 1 unreadable: boom", "state"),
        ("user_id: Input should be a valid integer", "invalid_fields"),
    ],
)
def test_reason_class_labels_are_stable(reason: str, label: str) -> None:
    assert reason_class(reason) == label


def test_a_huge_value_and_key_are_truncated_with_length_and_hash() -> None:
    value, key = bytes(range(256)) * 4096, b"k" * (1 << 20)  # 1 MiB each
    limit = 65536
    letter = raw_dead_letter(
        key, value, Position("t.watch", 3, 7), "bad\n" * 10_000, 2e9, "w", payload_limit=limit
    )
    assert len(letter.to_json()) <= 2 * (4 * limit // 3 + 4) + 2048
    assert base64.b64decode(letter.raw_b64) == value[:limit] and letter.raw_truncated
    assert base64.b64decode(letter.key_b64 or "") == key[:limit] and letter.key_truncated
    assert letter.raw_bytes == len(value) and letter.raw_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.key_bytes == len(key) and letter.key_sha256 == hashlib.sha256(key).hexdigest()
    assert len(letter.error) <= MAX_REASON_CHARS and "\n" not in letter.error


def test_a_small_payload_is_kept_exactly() -> None:
    letter = raw_dead_letter(None, b"abc", Position("t", 0, 0), "r", 1.0, None, payload_limit=3)
    assert base64.b64decode(letter.raw_b64) == b"abc" and not letter.raw_truncated
    assert letter.key_b64 is None and letter.key_bytes is None and not letter.key_truncated


def test_process_batch_passes_the_payload_limit_on() -> None:
    big = b"{" + b" " * 5000
    result = process_batch(
        [consumed(0, big)],
        lambda _u, _i: None,
        limits=Limits(),
        rules=RULES,
        now=2e9,
        payload_limit=300,
    )
    letter = result.dead_letters[0][1]
    assert letter.raw_truncated and base64.b64decode(letter.raw_b64) == big[:300]
    assert letter.raw_bytes == len(big) and "exceeds the 1024-byte limit" in letter.error
