"""Validation of the wire contracts: what is accepted, and the reason for what is not."""

from __future__ import annotations

import json

import pytest

from stream.events import (
    EventKind,
    InvalidEvent,
    RecommendationRequest,
    UploadEvent,
    WatchEvent,
    decode_event,
)

NOW = 1.7e9
GOOD = {
    "schema_version": 1,
    "event_id": "e1",
    "user_id": 5,
    "item_id": 7,
    "ts": 1.6e9,
    "watch_seconds": 30,
    "device": "web",
}


def decode(value: bytes | None, key: bytes | None = b"5", kind: EventKind = EventKind.WATCH):
    return decode_event(kind, value, key, now=NOW, max_bytes=4096, max_future_skew_s=300)


def test_valid_watch_round_trips() -> None:
    ev = decode(json.dumps(GOOD).encode())
    assert isinstance(ev, WatchEvent) and ev.watch_seconds == 30.0
    assert decode(ev.to_json()) == ev


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (json.dumps({**GOOD, "schema_version": 2}).encode(), "unsupported schema_version 2"),
        (json.dumps({**GOOD, "user_id": "5"}).encode(), "user_id: Input should be a valid integer"),
        (json.dumps({**GOOD, "watch_seconds": -1}).encode(), "watch_seconds"),
        (json.dumps({**GOOD, "ts": NOW + 10_000}).encode(), "in the future"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "item_id"}).encode(),
            "item_id: Field required",
        ),
        (json.dumps({**GOOD, "pad": "x" * 5000}).encode(), "exceeds the 4096-byte limit"),
        (b"[1, 2]", "Input should be an object"),
        (None, "tombstone"),
    ],
)
def test_invalid_watch_is_refused_with_its_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode(value)


def test_key_must_match_the_user_id() -> None:
    with pytest.raises(InvalidEvent, match="does not match id 5"):
        decode(json.dumps(GOOD).encode(), key=b"6")


def test_uploads_are_keyed_by_item() -> None:
    up = UploadEvent(item_id=9, ts=1.0, duration_seconds=60, tags=["a"])
    assert decode(up.to_json(), key=b"9", kind=EventKind.UPLOAD) == up


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    ev = decode(json.dumps({**GOOD, "new_field": 1}).encode())
    assert isinstance(ev, WatchEvent)


def test_request_defaults() -> None:
    req = RecommendationRequest(request_id="r", user_id=1)
    assert req.k == 10 and req.context.device is None
