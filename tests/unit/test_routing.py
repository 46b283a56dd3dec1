"""Partition routing (stream.routing): murmur2 as Kafka's Java client, forwarding misrouted
records once, and de-duplicating their copies by origin."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from stream.events import WatchEvent
from stream.routing import (
    ORIGIN_HEADER,
    Forwarder,
    RoutingHints,
    crc32_partition,
    forwarded_elsewhere,
    key_partition,
    origin_of,
    read_position,
    target_partition,
)
from stream.state import Limits, Position, UserState, apply_checked

# Kafka's own murmur2 test vectors (clients/src/test/.../UtilsTest.testMurmur2), signed int32
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key", sorted(JAVA_MURMUR2))
def test_partition_is_what_the_java_client_computes(key: bytes) -> None:
    java = JAVA_MURMUR2[key]
    for n in (1, 3, 4, 12, 64):
        assert key_partition(key, n) == (java & 0x7FFFFFFF) % n  # Utils.toPositive(h) % n


def test_the_issue_user_is_where_each_partitioner_puts_it() -> None:
    # issue 16: kcat (CRC32) put user 4242 on partition 3, the Java client on partition 0
    assert key_partition(b"4242", 4) == 0
    assert crc32_partition(b"4242", 4) == 3


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Any = None
    timestamp: float | None = 1_700_000_000.5


@dataclass
class Ev:
    message: Msg


@dataclass
class Sent:
    copies: list[tuple[Any, ...]] = field(default_factory=list)

    def __call__(self, *args: Any) -> str:
        self.copies.append(args)
        return f"future-{len(self.copies)}"


def _ev(key: bytes | None, partition: int, offset: int = 7, headers: Any = None) -> Ev:
    return Ev(Msg("t.watch", partition, offset, key, b"{}", headers))


def test_a_misrouted_record_is_forwarded_to_its_key_partition_with_its_origin() -> None:
    sent = Sent()
    fwd = Forwarder(4, sent)
    home = _ev(b"4242", 0, offset=1)
    stray = _ev(b"4242", 3, offset=9, headers=[("traceparent", b"00-ab")])
    assert fwd.keep_local([home, stray]) == [home]
    [(topic, key, value, headers, partition, ts)] = sent.copies
    assert (topic, key, value, partition, ts) == ("t.watch", b"4242", b"{}", 0, 1_700_000_000.5)
    assert headers[0] == ("traceparent", b"00-ab")  # the producer's headers travel on
    assert origin_of(headers) == Position("t.watch", 3, 9)


def test_records_not_keyed_by_an_id_stay_for_validation() -> None:
    sent = Sent()
    events = [_ev(None, 1), _ev(b"", 2), _ev(b"-5", 3), _ev(b"x" * 30, 0), _ev(b"1" * 21, 1)]
    assert Forwarder(4, sent).keep_local(events) == events
    assert not sent.copies


def test_a_copy_is_never_forwarded_again(caplog: pytest.LogCaptureFixture) -> None:
    # a worker with another partition count would send it back: it is processed where it is
    copy = [(ORIGIN_HEADER, b"t.watch/3/9")]
    with caplog.at_level(logging.ERROR, logger="stream.routing"):
        assert target_partition(b"4242", 2, 4, copy) is None
    assert "do all workers use 4 partitions" in caplog.text
    assert target_partition(b"4242", 2, 4, None) == 0


def test_readers_of_the_topic_skip_originals_and_take_copies() -> None:
    assert forwarded_elsewhere(b"4242", 3, 4, None)
    assert not forwarded_elsewhere(b"4242", 0, 4, None)
    assert not forwarded_elsewhere(b"4242", 0, 4, [(ORIGIN_HEADER, b"t.watch/3/9")])
    assert not forwarded_elsewhere(b"not-an-id", 3, 4, None)


def test_an_unreadable_origin_header_is_no_origin() -> None:
    for bad in (b"", b"t.watch/x/9", b"\xff\xfe", b"t.watch/3"):
        assert origin_of([(ORIGIN_HEADER, bad)]) is None
    assert read_position("t.watch", 0, 5, [(ORIGIN_HEADER, b"a/b/c")]) == Position("t.watch", 0, 5)
    assert origin_of({ORIGIN_HEADER: b"my.topic.v2/11/12345"}) == Position("my.topic.v2", 11, 12345)


def test_two_copies_of_one_original_apply_once() -> None:
    # forwarded, the worker killed before the original's offset was committed, forwarded again:
    # the copies sit at two offsets of the right partition but share the origin
    limits = Limits()
    watch = WatchEvent(event_id="w1", user_id=4242, item_id=5, ts=1.0, watch_seconds=30.0)
    again = watch.model_copy(update={"event_id": "w1-resent"})  # not caught by the id window
    origin = [(ORIGIN_HEADER, b"t.watch/3/9")]
    state = UserState(user_id=4242)
    first = read_position("t.watch", 0, 20, origin)
    second = read_position("t.watch", 0, 35, origin)
    state, outcome = apply_checked(state, watch, first, limits, None)
    assert outcome == "applied"
    state, outcome = apply_checked(state, again, second, limits, None)
    assert outcome == "duplicate" and state.n_watches == 1
    # without the origin (copies applied where they were read) the second one would count
    plain = apply_checked(UserState(user_id=4242), watch, Position("t.watch", 0, 20), limits)[0]
    assert apply_checked(plain, again, Position("t.watch", 0, 35), limits)[0].n_watches == 2


def test_one_hint_per_topic_and_producer_partitioner(caplog: pytest.LogCaptureFixture) -> None:
    keys = [str(u).encode() for u in range(200)]
    crc = [k for k in keys if crc32_partition(k, 4) != key_partition(k, 4)][:3]
    # a partition neither murmur2 nor CRC32 gives the key: a random or custom partitioner
    other = next(k for k in keys if 1 not in (key_partition(k, 4), crc32_partition(k, 4)))
    hints = RoutingHints()
    with caplog.at_level(logging.WARNING, logger="stream.routing"):
        told = [hints.note("t.watch", k, crc32_partition(k, 4), 4) for k in crc]
        told.append(hints.note("t.watch", other, 1, 4))
        told.append(hints.note("t.search", crc[0], crc32_partition(crc[0], 4), 4))
    assert told == [True, False, False, True, True]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert ["librdkafka's default partitioner" in m for m in messages] == [True, False, True]
    assert all("partitioner=murmur2_random" in m for m in messages)
