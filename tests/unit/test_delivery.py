"""The delivery barrier (stream/delivery.py): acks only after every effect is acknowledged,
in offset order per partition; failed sends are retried, and a partition whose effect keeps
failing is paused with nothing past it acked."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka.structs import TopicPartition
from faust.types import TP

from stream import faust_fixes
from stream.delivery import DeliveryBarrier


class FakeConsumer:
    def __init__(self) -> None:
        self.acked: list[tuple[str, int, int]] = []
        self.paused: set[TP] = set()
        self._unacked_messages: set = set()
        self.tps: set[TP] = set()

    def ack(self, message) -> bool:
        assert faust_fixes._DURABLE.get(), "the barrier must ack through durable_ack"
        self.acked.append((message.topic, message.partition, message.offset))
        return True

    def assignment(self) -> set[TP]:
        return self.tps

    def pause_partitions(self, tps) -> None:
        assert all(type(tp) is TP for tp in tps)  # faust asserts this in its fetcher
        self.paused |= set(tps)

    def resume_partitions(self, tps) -> None:
        assert all(type(tp) is TP for tp in tps)
        self.paused -= set(tps)


class FakeChannel:
    """send_soon returns a future the test resolves; a resend fails ``fail_resends`` times."""

    def __init__(self, loop, fail_resends: int = 0) -> None:
        self.loop = loop
        self.sent: list[asyncio.Future] = []
        self.fail_resends = fail_resends

    def get_topic_name(self) -> str:
        return "out"

    def send_soon(self, key=None, value=None, **kw):
        fut = self.loop.create_future()
        fut.message = SimpleNamespace(
            channel=self,
            key=key,
            value=value,
            partition=None,
            timestamp=None,
            headers=None,
            callback=None,
        )
        self.sent.append(fut)
        if kw.get("key_serializer") == "raw":  # a resend
            if self.fail_resends > 0:
                self.fail_resends -= 1
                fut.set_exception(RuntimeError("broker down"))
            else:
                fut.set_result("ok")
        return fut


class _Message:
    def __init__(self, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = "in", partition, offset
        self.tp = TopicPartition("in", partition)  # what a consumed message carries


def _event(partition: int, offset: int):
    return SimpleNamespace(message=_Message(partition, offset))


def _barrier(consumer, retries: int = 3) -> DeliveryBarrier:
    app = SimpleNamespace(consumer=consumer, rebalancing=False)
    return DeliveryBarrier(app, retries=retries, backoff_s=0.01, max_backoff_s=0.02)


def test_events_are_acked_only_after_their_effects_in_offset_order() -> None:
    async def run() -> list:
        loop = asyncio.get_running_loop()
        consumer = FakeConsumer()
        barrier = _barrier(consumer)
        out = FakeChannel(loop)
        with barrier.effects() as first:
            barrier.send(out, b"k", b"v1")
        barrier.track([_event(0, 10)], first)
        with barrier.effects() as second:
            barrier.send(out, b"k", b"v2")
        barrier.track([_event(0, 11), _event(1, 5)], second)
        assert consumer.acked == []
        out.sent[1].set_result("ok")  # the later entry's effect first
        await asyncio.sleep(0)
        # partition 1 has nothing before it; partition 0 waits for offset 10
        assert consumer.acked == [("in", 1, 5)]
        out.sent[0].set_result("ok")
        await asyncio.sleep(0)
        assert barrier.unacked == 0
        return consumer.acked

    assert asyncio.run(run()) == [("in", 1, 5), ("in", 0, 10), ("in", 0, 11)]


def test_an_entry_without_effects_is_acked_at_once() -> None:
    consumer = FakeConsumer()
    barrier = _barrier(consumer)
    barrier.track([_event(0, 1)], [])
    assert consumer.acked == [("in", 0, 1)]


def test_failed_send_is_retried_and_then_acked() -> None:
    async def run() -> FakeConsumer:
        loop = asyncio.get_running_loop()
        consumer = FakeConsumer()
        consumer.tps = {TP("in", 0)}
        barrier = _barrier(consumer, retries=5)
        out = FakeChannel(loop, fail_resends=2)
        with barrier.effects() as effects:
            barrier.send(out, b"k", b"v")
        barrier.track([_event(0, 7)], effects)
        out.sent[0].set_exception(RuntimeError("timeout"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if consumer.acked:
                break
        assert len(out.sent) == 4  # original + 2 failed resends + 1 that went through
        return consumer

    consumer = asyncio.run(run())
    assert consumer.acked == [("in", 0, 7)]
    assert consumer.paused == set()


def test_a_partition_whose_effect_keeps_failing_is_paused_and_nothing_behind_it_acked() -> None:
    async def run() -> tuple[FakeConsumer, DeliveryBarrier, FakeChannel]:
        loop = asyncio.get_running_loop()
        consumer = FakeConsumer()
        consumer.tps = {TP("in", 0)}
        barrier = _barrier(consumer, retries=2)
        out = FakeChannel(loop, fail_resends=10**6)
        with barrier.effects() as effects:
            barrier.send(out, b"k", b"v")
        barrier.track([_event(0, 7)], effects)
        barrier.track([_event(0, 8)], [])  # later offset, no effects of its own
        out.sent[0].set_exception(RuntimeError("timeout"))
        for _ in range(50):
            await asyncio.sleep(0.01)
        return consumer, barrier, out

    consumer, barrier, _ = asyncio.run(run())
    assert consumer.acked == []
    assert consumer.paused == {TP("in", 0)}
    assert barrier.stopped == {TP("in", 0)}


def test_an_undeliverable_entry_is_left_unacked_when_a_rebalance_comes() -> None:
    async def run() -> tuple[FakeConsumer, DeliveryBarrier]:
        loop = asyncio.get_running_loop()
        consumer = FakeConsumer()
        consumer.tps = {TP("in", 0)}
        barrier = _barrier(consumer, retries=1)
        out = FakeChannel(loop, fail_resends=10**6)
        ev = _event(0, 3)
        consumer._unacked_messages.add(ev.message)
        with barrier.effects() as effects:
            barrier.send(out, b"k", b"v")
        barrier.track([ev], effects)
        out.sent[0].set_exception(RuntimeError("timeout"))
        await asyncio.sleep(0.02)
        barrier.app.rebalancing = True
        for _ in range(20):
            await asyncio.sleep(0.01)
        return consumer, barrier

    consumer, barrier = asyncio.run(run())
    assert consumer.acked == []
    assert consumer._unacked_messages == set()  # faust's revoke no longer waits for it
    assert consumer.paused == set()  # resumed: the next owner reads it again
    assert barrier.unacked == 0
