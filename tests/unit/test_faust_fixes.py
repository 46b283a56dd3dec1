"""The faust fixes the delivery barrier relies on (stream/faust_fixes.py), on a real faust
Consumer object (no broker needed: nothing here connects).

If faust-streaming is upgraded, ``test_pinned_faust_source_is_unchanged`` fails until the fixes
are re-read against the new source; the behaviour tests below say what each fix guarantees.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
import pytest
from faust.types import TP

from stream import faust_fixes


@pytest.fixture(scope="module")
def consumer():
    faust_fixes.install()
    app = faust.App("watchnext-fixes-test", broker="kafka://127.0.0.1:1")
    return app.consumer


def _acked(consumer, tp, offsets, committed):
    consumer._acked.pop(tp, None)
    consumer._acked_index.pop(tp, None)
    consumer._gap.pop(tp, None)
    consumer._committed_offset[tp] = committed
    consumer._acked[tp].extend(offsets)
    consumer._acked_index[tp].update(offsets)


def test_pinned_faust_source_is_unchanged() -> None:
    assert faust_fixes.check_faust_version() == []


def test_a_hole_at_the_committed_offset_is_not_committed_past(consumer) -> None:
    tp = TP("t-hole", 0)
    _acked(consumer, tp, [101, 102], committed=100)  # faust itself would commit 103
    assert consumer._new_offset(tp) is None
    consumer._acked[tp].append(100)
    assert consumer._new_offset(tp) == 103
    assert consumer._acked[tp] == []


def test_a_committed_offset_of_zero_still_guards(consumer) -> None:
    tp = TP("t-zero", 0)
    _acked(consumer, tp, [1, 2], committed=0)
    assert consumer._new_offset(tp) is None


def test_only_the_run_from_the_committed_offset_commits(consumer) -> None:
    tp = TP("t-run", 0)
    _acked(consumer, tp, [7, 5, 6, 9, 10], committed=5)
    assert consumer._new_offset(tp) == 8
    assert consumer._acked[tp] == [9, 10]  # kept for when 8 is acked


def test_recorded_gaps_count_as_done(consumer) -> None:
    tp = TP("t-gap", 0)
    _acked(consumer, tp, [10, 14], committed=10)
    consumer._gap[tp].addi(11, 14)  # offsets 11..13 absent (e.g. transaction markers)
    assert consumer._new_offset(tp) == 15


class _Message:
    """What Consumer.ack reads of a faust Message."""

    def __init__(self, topic: str, offset: int) -> None:
        self.topic, self.offset, self.tp = topic, offset, TP(topic, 0)
        self.acked = False


def _message(topic: str, offset: int) -> _Message:
    return _Message(topic, offset)


def test_faust_acks_on_managed_topics_are_ignored(consumer) -> None:
    faust_fixes.manage_topics(["t-managed"])
    consumer.app.topics._acking_topics.add("t-managed")  # as a subscribed agent topic is
    msg = _message("t-managed", 3)
    consumer._committed_offset[msg.tp] = 3
    assert consumer.ack(msg) is False  # e.g. the ack of a skipped message
    assert not msg.acked and 3 not in consumer._acked[msg.tp]
    assert faust_fixes.durable_ack(consumer, msg) is True
    assert msg.acked and 3 in consumer._acked[msg.tp]


def test_acks_on_other_topics_are_faust_acks(consumer) -> None:
    consumer.app.topics._acking_topics.add("t-unmanaged")
    msg = _message("t-unmanaged", 0)
    assert consumer.ack(msg) is True


def test_a_send_that_raises_fails_its_future_instead_of_the_producer() -> None:
    from faust.transport.producer import ProducerBuffer

    faust_fixes.install()

    class Boom:
        def get_topic_name(self) -> str:
            return "t-boom"

        async def publish_message(self, fut, wait: bool = False):
            raise ValueError("MessageSizeTooLarge")

    async def run() -> BaseException | None:
        fut = asyncio.get_running_loop().create_future()
        fut.message = SimpleNamespace(channel=Boom())  # type: ignore[attr-defined]
        await ProducerBuffer._send_pending(None, fut)  # type: ignore[arg-type]
        return fut.exception()

    exc = asyncio.run(run())
    assert isinstance(exc, ValueError)


def test_a_skipped_message_is_read_again(consumer) -> None:
    """faust skips (and acks) a message while flow is suspended; nothing fetches it again once
    the position moved past it, so the skip schedules a seek back to it."""
    faust_fixes.manage_topics(["t-skip"])
    consumer.app.topics._acking_topics.add("t-skip")
    msg = _message("t-skip", 42)
    msg.tracked = False  # no stream took it
    msg.generation_id = consumer.app.consumer_generation_id
    faust_fixes._REWIND.clear()
    assert consumer.ack(msg) is False
    assert {msg.tp: 42} == faust_fixes._REWIND
    taken = _message("t-skip", 43)
    taken.tracked = True  # a stream took it: take_events' own ack, not a skip
    taken.generation_id = msg.generation_id
    consumer.ack(taken)
    assert {msg.tp: 42} == faust_fixes._REWIND
    faust_fixes._REWIND.clear()


def test_a_hole_that_stays_is_read_again(consumer, monkeypatch) -> None:
    tp = TP("t-stuck", 0)
    _acked(consumer, tp, [11, 12], committed=10)
    faust_fixes._REWIND.clear()
    faust_fixes._HOLES.clear()
    clock = [1000.0]
    monkeypatch.setattr(faust_fixes.time, "monotonic", lambda: clock[0])
    assert consumer._new_offset(tp) is None
    clock[0] += faust_fixes.HOLE_REWIND_S / 2
    assert consumer._new_offset(tp) is None and tp not in faust_fixes._REWIND
    faust_fixes.track_in_flight(lambda t, offset: offset == 10)  # still being delivered
    clock[0] += faust_fixes.HOLE_REWIND_S
    assert consumer._new_offset(tp) is None and tp not in faust_fixes._REWIND
    faust_fixes.track_in_flight(lambda t, offset: False)  # lost
    assert consumer._new_offset(tp) is None
    assert {tp: 10} == faust_fixes._REWIND
    faust_fixes._REWIND.clear()


class _Fetching:
    """Enough of a faust Consumer for ``_getmany``: fetches are scripted, delivery updates the
    read offset as ``Consumer._drain_messages`` does, seeks are recorded."""

    def __init__(
        self, tp: TP, fetches: list[list[int]], committed: int, read: int, delivered: bool = True
    ) -> None:
        """``read``: faust's read offset; ``delivered``: it is the last offset delivered (else
        the offset of faust's last seek, the next one to read)."""
        self.fetches = fetches
        self.tp = tp
        self._read_offset = {tp: read}
        self._committed_offset = {tp: committed}
        self.should_stop = False
        self.flow_active = True
        self.app = SimpleNamespace(
            consumer_generation_id=1, flow_control=SimpleNamespace(is_active=lambda: True)
        )
        self.seeks: list[int] = []
        self.during_delivery = lambda: None
        if delivered:
            faust_fixes._DELIVERED[tp] = (1, read)

    async def _wait_next_records(self, timeout: float):
        offsets = self.fetches.pop(0)
        return {self.tp: [SimpleNamespace(offset=o) for o in offsets]}, {self.tp}

    def assignment(self) -> set[TP]:
        return {self.tp}

    async def _seek(self, tp: TP, offset: int) -> None:
        self.seeks.append(offset)

    async def deliver(self) -> list[int]:
        """One fetch through the fix, delivered like faust's drain loop; the offsets taken."""
        taken = []
        async for tp, message in faust_fixes._getmany(self, 1.0):
            taken.append(message.offset)
            self.during_delivery()
            self._read_offset[tp] = message.offset
        return taken


@pytest.fixture
def scripted_getmany(monkeypatch):
    async def getmany(self, timeout):
        records, _ = await self._wait_next_records(timeout)
        for tp, batch in records.items():
            for record in batch:
                yield tp, record

    faust_fixes.install()
    monkeypatch.setitem(faust_fixes._ORIGINALS, "Consumer.getmany", getmany)
    faust_fixes._JUMPS.clear()
    faust_fixes._REWIND.clear()
    faust_fixes._DELIVERED.clear()
    yield
    faust_fixes._JUMPS.clear()
    faust_fixes._DELIVERED.clear()


def test_a_fetch_that_jumps_over_records_is_read_again_first(scripted_getmany) -> None:
    """faust would take 61..215 as a gap (committed unprocessed); the fix reads them first and
    only takes a second jump to the same offset as records that are really absent."""
    tp = TP("t-jump", 3)
    faust_fixes.manage_topics([tp.topic])
    c = _Fetching(tp, [[216, 217], [61, 62], [300]], committed=55, read=60)
    assert asyncio.run(c.deliver()) == []  # nothing past the jump is delivered
    assert c.seeks == [61]
    assert asyncio.run(c.deliver()) == [61, 62]  # the records in between exist
    assert asyncio.run(c.deliver()) == []  # jumps again, from 62 to 300
    assert c.seeks == [61, 63]
    c.fetches = [[300, 301]]
    c._read_offset[tp] = 62  # the seek (aiokafka position) left faust's read offset
    assert asyncio.run(c.deliver()) == [300, 301]  # the same jump again: absent records


def test_right_after_a_seek_to_the_commit_the_committed_record_is_read_again(
    scripted_getmany,
) -> None:
    tp = TP("t-jump", 1)
    faust_fixes.manage_topics([tp.topic])
    c = _Fetching(tp, [[158]], committed=68, read=68, delivered=False)  # after perform_seek
    assert asyncio.run(c.deliver()) == []
    assert c.seeks == [68]


def test_a_fetch_one_past_the_offset_sought_is_a_jump(scripted_getmany) -> None:
    """The chaos run that lost a search: faust sought the commit (120), the fetch began at 121,
    faust saw no gap, and 120 was read again only as a hole, after the user's later searches."""
    tp = TP("t-jump", 2)
    faust_fixes.manage_topics([tp.topic])
    c = _Fetching(tp, [[121, 122], [120, 121, 122]], committed=120, read=120, delivered=False)
    assert asyncio.run(c.deliver()) == []
    assert c.seeks == [120]
    c._read_offset[tp] = 120  # the rewind moves the consumer's position only
    assert asyncio.run(c.deliver()) == [120, 121, 122]
    c.fetches = [[123, 124]]
    assert asyncio.run(c.deliver()) == [123, 124]  # after a delivery the next is one more


def test_a_seek_by_faust_during_delivery_is_not_undone(scripted_getmany) -> None:
    """Table recovery seeks to the commit while a fetch is being delivered: rewinding to the
    end of that fetch afterwards would move the position past everything from the commit."""
    tp = TP("t-race", 0)
    faust_fixes.manage_topics([tp.topic])
    c = _Fetching(tp, [[100, 101, 102]], committed=90, read=99)

    def faust_seeks_and_pauses() -> None:
        c._read_offset[tp] = 90  # perform_seek: position and read offset at the commit
        c.during_delivery = lambda: None

    c.during_delivery = faust_seeks_and_pauses
    taken = asyncio.run(c.deliver())
    assert taken == [100, 101, 102]
    assert c.seeks == []  # the next fetch starts at the commit, as faust set it


def test_records_dropped_before_delivery_are_still_rewound(scripted_getmany) -> None:
    tp = TP("t-drop", 0)
    faust_fixes.manage_topics([tp.topic])
    c = _Fetching(tp, [[10, 11, 12]], committed=10, read=9)

    original = faust_fixes._ORIGINALS["Consumer.getmany"]

    async def paused_after_first(self, timeout):  # faust stops yielding a paused partition
        async for tp_, record in original(self, timeout):
            yield tp_, record
            return

    faust_fixes._ORIGINALS["Consumer.getmany"] = paused_after_first
    try:
        assert asyncio.run(c.deliver()) == [10]
    finally:
        faust_fixes._ORIGINALS["Consumer.getmany"] = original
    assert c.seeks == [11]


def test_a_hole_is_read_again_even_where_fausts_read_offset_sits_on_it(consumer, monkeypatch):
    """After faust's seek to the commit its read offset is the committed offset itself; the
    consumer's position was past it, so the hole stayed for minutes until the seek was forced."""
    tp = TP("t-sits", 0)
    consumer.app.topics._acking_topics.add("t-sits")
    faust_fixes.manage_topics(["t-sits"])
    _acked(consumer, tp, [36, 37], committed=35)
    faust_fixes._REWIND.clear()
    faust_fixes._HOLES.clear()
    clock = [1000.0]
    monkeypatch.setattr(faust_fixes.time, "monotonic", lambda: clock[0])
    faust_fixes.track_in_flight(lambda t, offset: False)
    assert consumer._new_offset(tp) is None
    clock[0] += faust_fixes.HOLE_REWIND_S + 1
    assert consumer._new_offset(tp) is None and {tp: 35} == faust_fixes._REWIND
    seeks = []
    fake = SimpleNamespace(
        flow_active=True,
        app=SimpleNamespace(flow_control=SimpleNamespace(is_active=lambda: True)),
        assignment=lambda: {tp},
        _committed_offset={tp: 35},
        _read_offset={tp: 35},  # as faust's perform_seek leaves it
    )

    async def seek(t, offset):
        seeks.append((t, offset))

    fake.seek = seek
    asyncio.run(faust_fixes._read_again(fake))
    assert seeks == [(tp, 35)] and not faust_fixes._REWIND
    faust_fixes._REWIND[tp] = 35  # a skip (not a hole) with the read offset not past it
    asyncio.run(faust_fixes._read_again(fake))
    assert seeks == [(tp, 35)]  # left to faust's own seek
