"""Which partition a keyed record belongs on, and what to do with one that arrived elsewhere.

A user's state lives on one partition of the ``users`` table: the partition that murmur2 (the
default partitioner of Kafka's Java client, kafka-python and aiokafka) gives the user's key, the
same on every user topic and the request topic (they share one partition count,
:mod:`stream.topics`). A producer with another partitioner — librdkafka's default
``consistent_random`` (CRC32) in confluent-kafka, kcat, and the Go and .NET clients — puts many
users' records on other partitions; read there, a user's state would be split over two
partitions and a request answered as for a new user, with no error anywhere.

So a worker that reads a record on a partition other than its key's forwards it, once, to the
right partition of the same topic, carrying the original headers plus :data:`ORIGIN_HEADER`
(the record's own topic/partition/offset), and acks the original only when the broker has the
copy (:mod:`stream.delivery`). The copy is applied under its *origin* position, so the state's
offset bookkeeping (:func:`stream.state.apply`) recognises a second copy — forwarded again
after a crash between the forward and the commit — as the record it is. A record that carries
the header is never forwarded again: if it still lands on a partition that is not its key's (a
worker that disagrees on the partition count), it is processed where it is and an error is
logged, so a record can never circle.

Records whose key is not a decimal id are left where they are: validation dead-letters them.
Nothing here imports faust; the agents in :mod:`stream.app` call :func:`target_partition`.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from kafka.partitioner.default import murmur2

from stream import metrics
from stream.state import Position

log = logging.getLogger(__name__)

ORIGIN_HEADER = "watchnext-forwarded-from"
MAX_ID_KEY_BYTES = 20  # 2^63 - 1 has 19 digits


@lru_cache(maxsize=1 << 16)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition of ``key`` under murmur2, exactly as Kafka's Java client computes it
    (``toPositive(murmur2(key)) % partitions``). Cached: kafka-python's murmur2 is pure
    Python (2 µs a key), and every record on the ingest path asks, mostly for the same users."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """The partition librdkafka's ``consistent``/``consistent_random`` partitioner gives
    ``key`` (CRC32 modulo the count): used to name the partitioner in the hint."""
    return zlib.crc32(key) % partitions


def is_id_key(key: Any) -> bool:
    """Whether ``key`` is a decimal id key (the only keys a worker routes by)."""
    return isinstance(key, bytes) and 0 < len(key) <= MAX_ID_KEY_BYTES and key.isdigit()


def header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    """A record's headers as a list of ``(name, value)`` pairs (faust gives a dict or a list)."""
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(str(k), bytes(v) if v is not None else b"") for k, v in pairs]


def origin_of(headers: Any) -> Position | None:
    """The position a forwarded record was first read at, or None for one that was not
    forwarded (or whose header is unreadable: then it is treated as not forwarded)."""
    for name, value in header_pairs(headers):
        if name != ORIGIN_HEADER:
            continue
        try:
            topic, partition, offset = value.decode("ascii").rsplit("/", 2)
            return Position(topic, int(partition), int(offset))
        except (UnicodeDecodeError, ValueError):
            return None
    return None


def origin_header(position: Position) -> tuple[str, bytes]:
    """The header a forwarded copy carries: where its original was read."""
    return ORIGIN_HEADER, f"{position.topic}/{position.partition}/{position.offset}".encode()


def target_partition(key: Any, partition: int, partitions: int, headers: Any) -> int | None:
    """The partition a record read on ``partition`` must be forwarded to, or None when it is
    processed here: its key is not an id, it is on its key's partition, or it was forwarded
    once already."""
    if not is_id_key(key):
        return None
    right = key_partition(key, partitions)
    if right == partition:
        return None
    if origin_of(headers) is not None:
        log.error(
            "forwarded record of key %r is on partition %d, not %d: do all workers use "
            "%d partitions? processed here",
            key,
            partition,
            right,
            partitions,
        )
        return None
    return right


def forwarded_elsewhere(key: Any, partition: int, partitions: int, headers: Any) -> bool:
    """Whether a record read on ``partition`` is an original a worker forwards (so a reader
    of the topic that replays events — the retrainer's log, a consistency check — takes its
    copy and skips it)."""
    return (
        is_id_key(key)
        and key_partition(key, partitions) != partition
        and origin_of(headers) is None
    )


def forwarded_headers(headers: Any, position: Position) -> list[tuple[str, bytes]]:
    """The headers of the forwarded copy: the original ones and :data:`ORIGIN_HEADER`."""
    return [*header_pairs(headers), origin_header(position)]


class RoutingHints:
    """Logs one hint per topic and guessed producer partitioner, the first time it is seen.

    A consumer cannot see which producer wrote a record, so the hint names what the misrouted
    partition says about it: where CRC32 (librdkafka's default) gives the partition seen, the
    producer is librdkafka-based; otherwise its partitioner is unknown (random, round-robin or
    a custom one).
    """

    def __init__(self) -> None:
        self._told: set[tuple[str, str]] = set()

    def guess(self, key: bytes, partition: int, partitions: int) -> str:
        """``librdkafka`` when CRC32 explains the partition, else ``unknown``."""
        return "librdkafka" if crc32_partition(key, partitions) == partition else "unknown"

    def note(self, topic: str, key: bytes, partition: int, partitions: int) -> bool:
        """Log the hint for this record's producer unless it was logged; True if logged."""
        kind = self.guess(key, partition, partitions)
        if (topic, kind) in self._told:
            return False
        self._told.add((topic, kind))
        right = key_partition(key, partitions)
        if kind == "librdkafka":
            advice = (
                "it looks like librdkafka's default partitioner (consistent_random, CRC32: "
                "confluent-kafka, kcat, Go, .NET): set partitioner=murmur2_random "
                "(kcat -X topic.partitioner=murmur2_random)"
            )
        else:
            advice = (
                "set the producer's partitioner to murmur2 (Kafka's Java default; "
                "librdkafka: partitioner=murmur2_random) and key records by the decimal id"
            )
        log.warning(
            "record with key %r on %s[%d] belongs on partition %d; forwarded there. The "
            "producer does not partition as watchnext does: %s. Forwarding costs a second "
            "write per record (watchnext_misrouted_total{topic=%r}).",
            key,
            topic,
            partition,
            right,
            advice,
            topic,
        )
        return True


def read_position(topic: str, partition: int, offset: int, headers: Any) -> Position:
    """The position a record is de-duplicated under: its origin when it is a forwarded copy
    (so a second copy of one original is a duplicate), else where it was read."""
    return origin_of(headers) or Position(topic, partition, offset)


Send = Callable[[str, bytes, bytes, list[tuple[str, bytes]], int, float | None], Any]


class Forwarder:
    """Forwards the misrouted records of a batch (see the module docstring); the agents call
    :meth:`keep_local` inside a delivery-barrier effects block, so each original is acked only
    once its copy is acknowledged by the broker.

    ``send(topic, key, value, headers, partition, timestamp)`` buffers the copy (the original
    record's timestamp is kept: it is the event's arrival time for the freshness clock).
    """

    def __init__(self, partitions: int, send: Send, hints: RoutingHints | None = None) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = partitions
        self.send = send
        self.hints = hints or RoutingHints()

    def keep_local(self, events: Sequence[Any]) -> list[Any]:
        """Forward every record of ``events`` (faust events) that belongs elsewhere; return
        the others, in order, to be processed here."""
        local = []
        for ev in events:
            msg = ev.message
            right = target_partition(msg.key, msg.partition, self.partitions, msg.headers)
            if right is None:
                local.append(ev)
                continue
            here = Position(msg.topic, msg.partition, msg.offset)
            self.send(
                msg.topic,
                msg.key,
                msg.value,
                forwarded_headers(msg.headers, here),
                right,
                msg.timestamp or None,
            )
            metrics.MISROUTED.labels(msg.topic).inc()
            self.hints.note(msg.topic, msg.key, msg.partition, self.partitions)
        return local
