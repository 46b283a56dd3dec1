"""The user-state codec: version 2 (MessagePack) written, version 1 (JSON) still read."""

from __future__ import annotations

import pytest

from stream.state import (
    ImpressionCounter,
    Profile,
    UserState,
    Watch,
    decode,
    decode_v1,
    encode,
    encode_v1,
)


def _capped() -> UserState:
    return UserState(
        user_id=123_456,
        history=tuple(Watch(1.7e9 + i, 1000 + i, 123.5) for i in range(50)),
        search_tokens=tuple(f"tok{i}" for i in range(50)),
        impressions={5000 + i: ImpressionCounter(i % 5 + 1, 1.7e9 + i) for i in range(200)},
        profile=Profile(ts=1.7e9, age=30, gender="M", zip="12345", region=None),
        device="web",
        country="US",
        n_watches=500,
        n_searches=40,
        n_impressions=300,
        applied={"w.watch/3": 123_456_789, "w.search/3": 5},
        recent_event_ids=tuple(f"event-{i:08d}" for i in range(32)),
        # what version 1 can carry of the watched list: the history's items (_with_watched)
        watched=tuple(1000 + i for i in range(50)),
    )


STATES = [UserState(user_id=0), UserState(user_id=7, device="tv"), _capped()]


@pytest.mark.parametrize("state", STATES, ids=["empty", "device", "capped"])
def test_both_versions_round_trip_to_the_same_state(state: UserState) -> None:
    assert decode(encode(state)) == state
    assert decode(encode_v1(state)) == state
    assert decode_v1(encode_v1(state)) == state
    restored = decode(encode(state))
    assert type(restored.history) is tuple and all(type(w) is Watch for w in restored.history)
    assert all(type(c) is ImpressionCounter for c in restored.impressions.values())


def test_version_2_is_tagged_and_smaller() -> None:
    state = _capped()
    assert encode(state)[:1] == b"\x02" and encode_v1(state)[:1] == b"{"
    assert len(encode(state)) < 0.8 * len(encode_v1(state))


@pytest.mark.parametrize(
    "raw",
    [b"", b"x", b"[1]", b'{"v": 3}', b'{"v": 1}', b"{not json", b"\x02", b"\x02\xff", b"\x02\x91"],
)
def test_unreadable_values_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode(raw)


def test_a_wrongly_typed_field_is_refused() -> None:
    import msgspec

    bad = b"\x02" + msgspec.msgpack.encode({"user_id": "seven"})
    with pytest.raises(ValueError, match="corrupt user-state"):
        decode(bad)
