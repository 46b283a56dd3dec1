"""Fixes to faust-streaming's offset bookkeeping that the delivery barrier relies on.

faust decides which offset to commit from the acks it records (``Consumer.ack`` →
``Consumer._acked``) and from "gaps" it infers in fetched offsets. Read against the pinned
version (``FAUST_VERSION``), five paths let an offset be committed although its record was
never processed, or was processed and its effects never reached the broker:

1. **Acks that are not acks.** ``Stream.__aiter__`` acks an event it *skips* (flow control
   suspended during a rebalance, or a message of an older consumer generation) even on a
   ``noack()`` stream, and ``take_events`` acks a batch in a ``finally`` also when the agent
   was cancelled mid-batch (faust-streaming #189). A skipped message is re-read after the
   rebalance's seek, but its ack is already recorded against the new assignment.
   *Fix:* on the topics our agents consume, ``Consumer.ack`` records only acks made through
   :func:`durable_ack`, i.e. by :class:`stream.delivery.DeliveryBarrier` after every record
   the input caused was acknowledged by the broker. faust's own acks are ignored there.
2. **An off-by-one in the commit point.** ``Consumer._new_offset`` guards against a hole at
   the head of the acked list with ``min(acked) - committed > 1``, but ``committed`` is the
   *next* offset to read, so a hole of exactly the committed offset is skipped (acked
   ``[101]`` with committed ``100`` commits ``102``), and a committed offset of 0 disables the
   guard. *Fix:* :func:`_new_offset` commits only a run of acks that starts at the committed
   offset; a hole there that stays ``HOLE_REWIND_S`` while no delivery holds it is read again
   from the committed offset, even when faust's read offset is not past it (right after
   faust's seek to the commit its read offset *is* the committed offset, while the consumer's
   position can already be past it: a restarted worker stalled partitions for minutes so).
3. **Fetched records dropped without rewinding.** ``Consumer.getmany`` drops records of a
   partition that was paused after the fetch (table recovery pauses partitions) while
   aiokafka's position has already moved past them; the next fetch then starts after them
   and ``_drain_messages`` records the jump as a gap, which ``_new_offset`` treats as acked
   (#606, #318). *Fix:* :func:`_getmany` rewinds such a partition to its first undelivered
   record (only while the generation is unchanged and flow is active: otherwise faust seeks
   to the committed offsets itself).
   The rewind is skipped when faust moved the partition itself meanwhile (its read offset is
   no longer the one this fetch left, e.g. table recovery's seek to the committed offsets):
   faust's position wins.
4. **A send error kills the producer.** ``ProducerBuffer._send_pending`` lets a synchronous
   send error (e.g. ``MessageSizeTooLargeError``) escape and crash the worker.
   *Fix:* the error is set on the message's future (the barrier counts it, retries it and,
   if it keeps failing, stops consuming that partition instead of committing past it).

5. **Any other jump is a gap.** ``_drain_messages`` takes every offset between its read
   offset and a fetched record as absent (a gap, so committed). A worker restarted after
   kill -9 showed such jumps over 50-160 real records of its low-rate topics in most runs
   (whether those were still unprocessed decided whether events were lost: 1-7 in 3 of ~8
   runs with bulk table writes); where in faust or aiokafka the position moves is not
   pinned down. And right after a seek faust's read offset is the offset sought, so a fetch
   that starts one past it skips that record without any gap (a chaos run lost a search so:
   the skipped record was read again 10 s later as a hole, after the same user's later
   searches, and the offset de-duplication took it for a replay). *Fix:* on our topics a
   jump past the next expected offset (:func:`_next_expected`) is not delivered, nor
   anything after it in that fetch; the partition is read again from the expected offset,
   and only a second jump to the same offset (records really absent: transaction markers,
   retention) reaches faust as a gap.

The patched functions are checked against fingerprints of the pinned faust source
(:func:`check_faust_version`), so an upgrade that changes them fails loudly (and in CI:
``tests/unit/test_faust_fixes.py``) instead of silently dropping a fix.
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from stream import metrics

log = logging.getLogger(__name__)

FAUST_VERSION = "0.15.3"
_DURABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("watchnext_durable", default=False)
_MANAGED_TOPICS: set[str] = set()
_installed = False
HOLE_REWIND_S = 10.0  # a hole at the committed offset older than this is read again
_REWIND: dict[Any, int] = {}  # tp -> offset to read again from (skipped or lost records)
_HOLES: dict[Any, tuple[int, float]] = {}  # tp -> (committed offset with a hole, since)
# partitions whose rewind comes from a hole that stayed: sought even when faust's read offset
# is not past the hole (right after its seek to the commit it *is* the committed offset, while
# the consumer's position may already be past it)
_HOLE_SEEKS: set[Any] = set()
_JUMPS: dict[Any, int] = {}  # tp -> offset a fetch jumped to, being read again (fix 5)
# tp -> (consumer generation, last offset passed on to faust's drain loop) (fix 5)
_DELIVERED: dict[Any, tuple[int, int]] = {}
# whether a record is still being processed (its effects not yet acknowledged): the delivery
# barrier registers itself here, so a slow broker is not mistaken for a lost record
_IN_FLIGHT: list[Callable[[Any, int], bool]] = [lambda tp, offset: False]


def _fingerprint(fn: Any) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


def _targets() -> dict[str, Any]:
    from faust.transport.consumer import Consumer
    from faust.transport.producer import ProducerBuffer

    return {
        "Consumer.ack": Consumer.ack,
        "Consumer._new_offset": Consumer._new_offset,
        "Consumer.getmany": Consumer.getmany,
        "Consumer._add_gap": Consumer._add_gap,
        "ProducerBuffer._send_pending": ProducerBuffer._send_pending,
    }


# sha256 (first 16 hex) of the pinned source of every faust function replaced or wrapped here
PINNED: dict[str, str] = {
    "Consumer.ack": "5fcf41cf45153475",
    "Consumer._new_offset": "1d2c7ea89a7ad4f1",
    "Consumer.getmany": "4b168d84882a70d6",
    "Consumer._add_gap": "4df2573ded7c1c2c",
    "ProducerBuffer._send_pending": "4a9d5f932b56bc68",
}


def check_faust_version() -> list[str]:
    """What differs from the faust version these fixes were written against (empty = same)."""
    import faust

    problems = []
    if faust.__version__ != FAUST_VERSION:
        problems.append(
            f"faust-streaming {faust.__version__} installed, fixes pinned to {FAUST_VERSION}"
        )
    originals = _ORIGINALS or _targets()
    for name, fn in originals.items():
        want = PINNED.get(name)
        if want and _fingerprint(fn) != want:
            problems.append(f"faust's {name} changed since {FAUST_VERSION}: re-read the fix")
    return problems


_ORIGINALS: dict[str, Any] = {}


def track_in_flight(holds: Callable[[Any, int], bool]) -> None:
    """Register ``holds(tp, offset)``: True while that record's effects are undelivered."""
    _IN_FLIGHT[0] = holds


def manage_topics(topics: Iterable[str]) -> None:
    """Topics whose offsets only the delivery barrier may mark as processed."""
    _MANAGED_TOPICS.update(topics)


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset committed for ``tp`` as this consumer knows it (the next one to read: every
    record below it is processed), or None before the first commit or seek."""
    offsets = getattr(consumer, "_committed_offset", None)
    offset = offsets.get(tp) if offsets is not None else None
    return offset if isinstance(offset, int) else None


def durable_ack(consumer: Any, message: Any) -> bool:
    """Record ``message`` as processed: every effect of it is acknowledged by the broker."""
    token = _DURABLE.set(True)
    try:
        return bool(consumer.ack(message))
    finally:
        _DURABLE.reset(token)


def _ack(self: Any, message: Any) -> bool:
    if message.topic in _MANAGED_TOPICS and not _DURABLE.get():
        # faust's own ack: not evidence of anything. A message no stream ever took (not
        # tracked) was *skipped* (flow suspended, older generation) and must be read again:
        # nothing else will fetch it once the partition's position has moved past it.
        if not getattr(message, "tracked", True) and not message.acked:
            tp = message.tp
            if message.generation_id == self.app.consumer_generation_id:
                _REWIND[tp] = min(_REWIND.get(tp, message.offset), message.offset)
        return False
    return bool(_ORIGINALS["Consumer.ack"](self, message))


def _new_offset(self: Any, tp: Any) -> int | None:
    """The offset to commit for ``tp``: one past the run of acks that starts at the committed
    offset, or None when the committed offset itself is not acked yet."""
    acked: list[int] = self._acked[tp]
    if not acked:
        return None
    gaps = self._gap[tp]
    if gaps:  # offsets faust saw to be absent (control records, compaction): count as done
        top = max(acked)
        for iv in sorted(gaps.overlap(0, top + 1), key=lambda iv: iv.begin):
            acked.extend(range(iv.begin, iv.end))
        gaps.chop(0, top + 1)
    acked[:] = sorted(set(acked))
    committed = self._committed_offset[tp]
    start = acked[0]
    if committed is not None and start > committed:
        # the committed offset itself is not processed: nothing to commit. If that lasts, the
        # record was lost between fetch and agent (a path not covered above): read it again.
        now = time.monotonic()
        hole = _HOLES.get(tp)
        if hole is None or hole[0] != committed:
            _HOLES[tp] = (committed, now)
        elif now - hole[1] > HOLE_REWIND_S and not _IN_FLIGHT[0](tp, committed):
            log.warning(
                "%s[%d]: offset %d unprocessed for %.0fs while later ones are done: reading "
                "from it again",
                tp.topic,
                tp.partition,
                committed,
                now - hole[1],
            )
            _REWIND[tp] = min(_REWIND.get(tp, committed), committed)
            _HOLE_SEEKS.add(tp)  # whatever faust's read offset says (see _read_again)
            _HOLES[tp] = (committed, now)
        return None
    _HOLES.pop(tp, None)
    end = start
    index = self._acked_index[tp]
    n = 0
    for offset in acked:
        if offset > end:
            break
        end = offset + 1
        n += 1
    done = acked[:n]
    del acked[:n]
    index.difference_update(done)
    return end


async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    metrics.OFFSET_GAPS.labels(tp.topic).inc()
    log.warning(
        "offset gap on %s[%d]: %d..%d not fetched (treated as absent records)",
        tp.topic,
        tp.partition,
        offset_from,
        offset_to - 1,
    )
    await _ORIGINALS["Consumer._add_gap"](self, tp, offset_from, offset_to)


async def _read_again(self: Any) -> None:
    """Seek partitions with skipped or lost records back to them (between two fetches, so no
    record of the previous fetch is still on its way to the streams)."""
    if not _REWIND or not self.flow_active or not self.app.flow_control.is_active():
        return
    assigned = self.assignment()
    for tp, offset in list(_REWIND.items()):
        del _REWIND[tp]
        committed = self._committed_offset.get(tp)
        if tp not in assigned or (committed is not None and offset < committed):
            continue  # moved away (its next owner reads from the commit) or done already
        position = self._read_offset.get(tp)
        hole = tp in _HOLE_SEEKS
        _HOLE_SEEKS.discard(tp)
        if not hole and (position is None or position <= offset):
            continue  # not read past it (e.g. a rebalance's seek to the commit came first)
        metrics.FETCH_REWINDS.labels(tp.topic).inc()
        log.info("reading %s[%d] again from %d (skipped or lost)", tp.topic, tp.partition, offset)
        await self.seek(tp, offset)  # aiokafka position and faust's read offset


def _next_expected(tp: Any, read: int, generation: int) -> int:
    """The offset faust's next record of ``tp`` must have, from its read offset ``read``.

    faust's read offset means two things: after a delivery it is the offset delivered (the
    next is one more), after any of its seeks it is the offset sought (the next record *is*
    that one). ``_DELIVERED`` tells them apart: it holds the last offset this wrapper passed
    on in this consumer generation, which the read offset equals only when no seek came after
    it (every rebalance seeks).
    """
    return read + 1 if _DELIVERED.get(tp) == (generation, read) else read


async def _getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    await _read_again(self)
    generation = self.app.consumer_generation_id
    fetched: dict[Any, tuple[int, int]] = {}  # tp -> (first, last) offset fetched
    delivered: dict[Any, int] = {}  # tp -> last offset yielded
    read_before: dict[Any, int | None] = {}  # tp -> faust's read offset before this fetch
    jumped: dict[Any, tuple[int, int]] = {}  # tp -> (offset to read again from, jumped to)
    original_fetch = self._wait_next_records

    async def fetch(timeout: float) -> Any:
        records, active = await original_fetch(timeout)
        for tp, batch in (records or {}).items():
            if batch:
                fetched[tp] = (batch[0].offset, batch[-1].offset)
                read_before.setdefault(tp, self._read_offset.get(tp))
        return records, active

    self._wait_next_records = fetch
    try:
        async for tp, message in _ORIGINALS["Consumer.getmany"](self, timeout):
            if tp in jumped:
                continue  # the rest of this fetch: read again after the jump
            if tp.topic in _MANAGED_TOPICS:
                read = self._read_offset.get(tp)
                # faust's own gap test (Consumer._drain_messages) takes every offset in
                # between as processed, and misses a jump of one right after a seek
                expected = _next_expected(tp, read, generation) if read else None
                if (
                    expected is not None
                    and message.offset > expected
                    and _JUMPS.get(tp) != message.offset
                ):
                    committed = self._committed_offset.get(tp)
                    target = expected if committed is None else max(expected, committed)
                    jumped[tp] = (target, message.offset)
                    log.warning(
                        "%s[%d]: fetch jumped from %d to %d; reading again from %d before "
                        "taking the offsets in between as absent",
                        tp.topic,
                        tp.partition,
                        read,
                        message.offset,
                        target,
                    )
                    continue
                _JUMPS.pop(tp, None)
                if read is None or message.offset >= read:  # faust's drain delivers it
                    _DELIVERED[tp] = (generation, message.offset)
            delivered[tp] = message.offset
            yield tp, message
    finally:
        del self._wait_next_records  # back to the class attribute
        if (
            not self.should_stop
            and self.flow_active
            and self.app.consumer_generation_id == generation
        ):
            for tp, (first, last) in fetched.items():
                if tp.topic not in _MANAGED_TOPICS:
                    continue  # table recovery keeps its own positions on changelogs
                done = delivered.get(tp)
                if tp not in jumped and done is not None and done >= last:
                    continue  # everything fetched was delivered
                if tp not in self.assignment():
                    continue
                if self._read_offset.get(tp) != (read_before.get(tp) if done is None else done):
                    # faust seeked meanwhile (e.g. to the commit after table recovery): its
                    # position wins; moving it here would skip what it is about to read again
                    continue
                if tp in jumped:
                    rewind, _JUMPS[tp] = jumped[tp]  # a second jump there is taken as absent
                else:
                    rewind = first if done is None else done + 1
                metrics.FETCH_REWINDS.labels(tp.topic).inc()
                log.info(
                    "rewinding %s[%d] to %d (fetched, not delivered)",
                    tp.topic,
                    tp.partition,
                    rewind,
                )
                await self._seek(tp, rewind)  # aiokafka position only; faust's read offset stays


async def _send_pending(self: Any, fut: Any) -> None:
    try:
        await _ORIGINALS["ProducerBuffer._send_pending"](self, fut)
    except Exception as exc:  # e.g. MessageSizeTooLargeError, raised before any I/O
        if not fut.done():
            fut.set_exception(exc)
        metrics.SEND_FAILURES.labels(_topic_of(fut)).inc()
        log.error("send to %s failed: %s: %s", fut.message.channel, type(exc).__name__, exc)


def _topic_of(fut: Any) -> str:
    channel = fut.message.channel
    get = getattr(channel, "get_topic_name", None)
    return str(get() if get else channel)


def install() -> None:
    """Apply the fixes (idempotent). Raises RuntimeError on an unpinned faust version."""
    global _installed
    if _installed:
        return
    from faust.transport.consumer import Consumer
    from faust.transport.producer import ProducerBuffer

    _ORIGINALS.update(_targets())
    problems = check_faust_version()
    if problems:
        raise RuntimeError("; ".join(problems))
    Consumer.ack = _ack  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer.getmany = _getmany  # type: ignore[method-assign,assignment]
    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    _installed = True
