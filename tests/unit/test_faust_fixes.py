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
