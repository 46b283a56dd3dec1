"""The delivery barrier: an input offset is acked only after everything it caused is durable.

Every record a consumed event or request causes — its user's changelog record, a dead letter,
a response, an impression — is produced through :meth:`DeliveryBarrier.send` (or, for table
writes, captured from faust's ``send_changelog``) inside :meth:`DeliveryBarrier.effects`. The
agent then hands the consumed events and those futures to :meth:`DeliveryBarrier.track`, and
moves on without awaiting anything. When the broker has acknowledged every future of an entry,
its events are acked (:func:`stream.faust_fixes.durable_ack`), per input partition in offset
order; faust commits only acked offsets (its own acks on these topics are ignored, see
:mod:`stream.faust_fixes`). So a commit never runs ahead of an effect, whatever faust's
``Producer.flush()`` timeout or a failed ``send_soon`` does.

A send that fails is counted (``watchnext_send_failures_total{topic}``) and sent again with
backoff. After ``retries`` failures the entry's input partitions are paused (the worker stops
consuming them, ``watchnext_partitions_stopped``) and the send is retried slowly until it goes
through or the partition moves to another worker; nothing behind it is acked meanwhile, so no
offset is committed past the undelivered effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream import metrics
from stream.faust_fixes import durable_ack, track_in_flight

log = logging.getLogger(__name__)

_COLLECTOR: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "watchnext_effects", default=None
)


def _topic_name(fut: Any) -> str:
    """The topic a produced future was for (a faust FutureMessage or a changelog delivery)."""
    topic = getattr(fut, "topic", None)
    if isinstance(topic, str):
        return topic
    channel = fut.message.channel
    get = getattr(channel, "get_topic_name", None)
    return str(get() if get else channel)


def _faust_tps(tps: set[Any]) -> set[Any]:
    from faust.types import TP

    return {TP(tp.topic, tp.partition) for tp in tps}


@dataclass
class _Entry:
    events: Sequence[Any]
    futures: list[Any]
    done: bool = False
    tps: set[Any] = field(default_factory=set)


class DeliveryBarrier:
    """Acks consumed events once the broker acknowledged every record they caused."""

    def __init__(
        self,
        app: Any,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.app = app
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._queues: dict[Any, deque[tuple[Any, _Entry]]] = defaultdict(deque)
        self._stopped: set[Any] = set()
        self._unacked = 0
        self._tasks: set[asyncio.Task[None]] = set()
        track_in_flight(self.holds)

    # --- producing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def effects(self) -> Iterator[list[Any]]:
        """Collect the futures of every record sent (or table value written) in this block."""
        collected: list[Any] = []
        token = _COLLECTOR.set(collected)
        try:
            yield collected
        finally:
            _COLLECTOR.reset(token)

    def send(
        self,
        channel: Any,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        partition: int | None = None,
        timestamp: float | None = None,
    ) -> Any:
        """Buffer one record without awaiting; its future joins the current effects block.

        ``partition`` None lets the producer's partitioner (murmur2 of the key) choose;
        ``timestamp`` (seconds) None stamps it now."""
        fut = channel.send_soon(
            key=key, value=value, headers=headers, partition=partition, timestamp=timestamp
        )
        self.capture(fut)
        return fut

    @staticmethod
    def capture(fut: Any) -> None:
        """Add a producer future to the current effects block (no-op outside one)."""
        collected = _COLLECTOR.get()
        if collected is not None:
            collected.append(fut)

    def watch_table(self, table: Any) -> None:
        """Capture the changelog record of every write to ``table`` into the effects block."""
        original = table.send_changelog

        def send_changelog(*args: Any, **kwargs: Any) -> Any:
            fut = original(*args, **kwargs)
            self.capture(fut)
            return fut

        table.send_changelog = send_changelog

    # --- acking -----------------------------------------------------------------------------

    def track(self, events: Sequence[Any], futures: list[Any]) -> None:
        """Ack ``events`` once every future in ``futures`` succeeded (never blocks)."""
        entry = _Entry(events=events, futures=list(futures))
        for ev in events:
            tp = ev.message.tp
            entry.tps.add(tp)
            self._queues[tp].append((ev, entry))
        self._unacked += len(entry.futures)
        metrics.UNACKED_EFFECTS.set(self._unacked)
        if not entry.futures:
            self._settle(entry)
            return
        remaining = [len(entry.futures)]

        def on_done(_: Any) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._settle(entry)

        for fut in entry.futures:
            fut.add_done_callback(on_done)

    def _settle(self, entry: _Entry) -> None:
        failed = [f for f in entry.futures if f.cancelled() or f.exception() is not None]
        if failed:
            task = asyncio.ensure_future(self._redeliver(entry, failed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._complete(entry)

    def _complete(self, entry: _Entry) -> None:
        """Every effect of ``entry`` is acknowledged: ack what is now at the head of its
        partitions' queues."""
        self._unacked -= len(entry.futures)
        metrics.UNACKED_EFFECTS.set(self._unacked)
        entry.done = True
        for tp in entry.tps:
            self._drain(tp)

    def _drain(self, tp: Any) -> None:
        queue = self._queues[tp]
        consumer = self.app.consumer
        while queue and queue[0][1].done:
            ev, _ = queue.popleft()
            durable_ack(consumer, ev.message)
        if not queue:
            self._queues.pop(tp, None)

    async def _redeliver(self, entry: _Entry, failed: list[Any]) -> None:
        """Send failed records again until the broker takes them (pausing after ``retries``)."""
        attempt = 0
        pending = failed
        while pending:
            attempt += 1
            for fut in pending:
                exc = None if fut.cancelled() else fut.exception()
                topic = _topic_name(fut)
                metrics.SEND_FAILURES.labels(topic).inc()
                log.warning(
                    "record for %s not acknowledged (%s: %s); try %d",
                    topic,
                    type(exc).__name__,
                    exc,
                    attempt,
                )
            if attempt == self.retries:
                self._stop(entry)
            delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
            while delay > 0 and not self.app.rebalancing:
                await asyncio.sleep(min(delay, 0.25))
                delay -= 0.25
            if self.app.rebalancing or not any(
                tp in self.app.consumer.assignment() for tp in entry.tps
            ):
                self._abandon(entry)
                return
            again = [self._resend(fut) for fut in pending]
            await asyncio.gather(*again, return_exceptions=True)  # FutureMessage is a Future
            pending = [f for f in again if f.cancelled() or f.exception() is not None]
        self._resume(entry)
        self._complete(entry)

    def _abandon(self, entry: _Entry) -> None:
        """Give an undelivered entry up without acking it: a rebalance waits for every message
        in flight to be acked, and this one may never be; whoever owns its partitions next
        reads it again from the last commit (which is before it)."""
        log.warning(
            "rebalance while effects of %d events on %s are undelivered: left unacked, they "
            "are processed again by the partitions' next owner",
            len(entry.events),
            sorted(f"{tp.topic}[{tp.partition}]" for tp in entry.tps),
        )
        unacked = self.app.consumer._unacked_messages
        for ev in entry.events:
            unacked.discard(ev.message)
        for tp in entry.tps:
            queue = self._queues.get(tp)
            if queue:
                self._queues[tp] = deque(item for item in queue if item[1] is not entry)
        self._unacked -= len(entry.futures)
        metrics.UNACKED_EFFECTS.set(self._unacked)
        self._resume(entry)

    @staticmethod
    def _resend(fut: Any) -> Any:
        resend = getattr(fut, "resend", None)
        if resend is not None:  # a bulk changelog delivery (stream.table_writer)
            return resend()
        msg = fut.message
        return msg.channel.send_soon(
            key=msg.key,
            value=msg.value,
            partition=msg.partition,
            timestamp=msg.timestamp,
            headers=msg.headers,
            key_serializer="raw",
            value_serializer="raw",
            callback=msg.callback,
        )

    def _stop(self, entry: _Entry) -> None:
        tps = entry.tps - self._stopped
        if not tps:
            return
        log.error(
            "stopping consumption of %s: an effect could not be delivered; nothing past it "
            "is committed",
            sorted(f"{tp.topic}[{tp.partition}]" for tp in tps),
        )
        self._stopped |= tps
        self.app.consumer.pause_partitions(_faust_tps(tps))
        metrics.PARTITIONS_STOPPED.set(len(self._stopped))

    def _resume(self, entry: _Entry) -> None:
        tps = entry.tps & self._stopped
        if not tps:
            return
        log.warning(
            "effects delivered after all: resuming %s",
            sorted(f"{tp.topic}[{tp.partition}]" for tp in tps),
        )
        self._stopped -= tps
        # faust's resume adds these to its active set as given, and its fetcher asserts that
        # they are faust TPs (a message's tp may be aiokafka's TopicPartition)
        self.app.consumer.resume_partitions(_faust_tps(tps))
        metrics.PARTITIONS_STOPPED.set(len(self._stopped))

    def holds(self, tp: Any, offset: int) -> bool:
        """Whether the record at ``tp``/``offset`` waits here for its effects."""
        return any(ev.message.offset == offset for ev, _ in self._queues.get(tp, ()))

    @property
    def unacked(self) -> int:
        """Records produced and not yet acknowledged by the broker."""
        return self._unacked

    @property
    def stopped(self) -> set[Any]:
        """Input partitions paused because an effect could not be delivered."""
        return set(self._stopped)
