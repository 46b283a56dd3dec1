"""The ceiling of ``bench ingest``: the worker's per-event work in a minimal aiokafka loop.

Why it is the ceiling: the loop does everything an event needs before the worker may count it
as processed, and nothing more. Per batch (``getmany`` of up to ``batch_max_events``, as faust's
``take_events`` hands the agent) it calls :func:`stream.ingest.process_batch`, the very
function the worker's agent calls, which decodes and validates every record
(:func:`stream.contract.decode_event` with ``EventRules.of(settings)``), loads the user's state
and applies :func:`stream.state.apply_checked`. Then it encodes every touched user once
(:func:`stream.state.encode`), writes them all to a local RocksDB (rocksdict) in one
``WriteBatch``, produces one changelog record per touched user (and the batch's dead letters) to
scratch topics with the input's partition count, with the worker's producer settings (acks=-1,
linger 0, faust's 16 KiB batches) as record batches per partition (``send_batch``, the
cheapest produce aiokafka has), and marks the batch's offsets committable once every record is
acknowledged — pipelined, as the worker does: the next batch is processed meanwhile. Offsets
are committed every ``commit_interval_s``, as the worker does; the run ends when the last
acknowledgement is in.

What it leaves out is the price of the framework: faust's streams, table and changelog
machinery, the per-event context binding, the delivery barrier, metrics, the /ready endpoint and
the vector refresh (a no-op in ``bench ingest``, which serves no model). So the worker can
approach this rate but not pass it, other than by noise; ``events_per_s /
ceiling_events_per_s`` is the share of the reachable rate the worker gets.

State cache: a plain dict of decoded states by user id, unbounded (it holds every user of the
run); RocksDB is read only on a user's first event in the run. The worker keeps an LRU of
decoded states (``state_cache_users``) in front of its table; at bench sizes both hold every
user, so both decode a user's value at most once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.contract import EventRules
from stream.events import EventKind
from stream.ingest import Consumed, letter_key, process_batch
from stream.state import Limits, Position, UserState, decode, encode
from watchnext.settings import Settings

# faust's producer defaults (faust.types.settings): what the worker's changelog producer uses
FAUST_LINGER_MS = 0
FAUST_MAX_BATCH_BYTES = 16_384


def backlog_consumer(settings: Settings, bootstrap: str, topics: list[str], name: str) -> Any:
    """An aiokafka consumer that reads ``topics`` from the start in a fresh group, with large
    fetches: the bare loop and the ceiling drain the same backlog the same way."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"{name}-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
        **settings.kafka_client_config(),
    )


def _flat(futures: Any) -> list[Any]:
    return futures if isinstance(futures, list) else [futures]


async def _send_batches(
    producer: Any, topic: str, partition: int, kvs: list[tuple[bytes, bytes]]
) -> list[Any]:
    """Produce ``kvs`` to one partition as record batches (``create_batch``/``send_batch``):
    the cheapest way aiokafka has, and the one the worker's bulk table writer uses."""
    futures, i = [], 0
    while i < len(kvs):
        batch = producer.create_batch()
        while i < len(kvs) and batch.append(key=kvs[i][0], value=kvs[i][1], timestamp=None):
            i += 1
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


@dataclass(frozen=True)
class CeilingRun:
    """One drain of the backlog by the ceiling loop."""

    events: int
    seconds: float  # first batch received to the end of the last batch
    batches: int
    changelog_records: int
    dead_letters: int
    changelog_topic: str
    db_path: Path

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


def _partitions(settings: Settings, bootstrap: str, topics: list[str]) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **settings.kafka_client_config())
    try:
        return max(len(consumer.partitions_for_topic(t) or ()) for t in topics)
    finally:
        consumer.close()


def _create_scratch(settings: Settings, bootstrap: str, names: list[str], partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **settings.kafka_client_config())
    try:
        admin.create_topics(
            [
                NewTopic(name, partitions, settings.replication, topic_configs=configs)
                for name, configs in zip(
                    names,
                    [
                        {"cleanup.policy": "compact"},
                        {"max.message.bytes": str(settings.deadletter_max_message_bytes)},
                    ],
                    strict=True,
                )
            ]
        )
    finally:
        admin.close()


def run_ceiling(
    settings: Settings, bootstrap: str, topics: list[str], n: int, db_dir: Path
) -> CeilingRun:
    """Drain ``n`` records of ``topics`` (from the start, fresh group) through the ceiling loop.

    The RocksDB database is created under ``db_dir`` and left there (closed) for inspection;
    the scratch changelog topic is named in the result.
    """
    tag = uuid.uuid4().hex[:8]
    changelog = settings.topic(f"ceiling-{tag}-users-changelog")
    deadletter = settings.topic(f"ceiling-{tag}-deadletter")
    _create_scratch(
        settings, bootstrap, [changelog, deadletter], _partitions(settings, bootstrap, topics)
    )
    return asyncio.run(_drain(settings, bootstrap, topics, n, db_dir, changelog, deadletter))


async def _drain(
    settings: Settings,
    bootstrap: str,
    topics: list[str],
    n: int,
    db_dir: Path,
    changelog: str,
    deadletter: str,
) -> CeilingRun:
    from aiokafka import AIOKafkaProducer, TopicPartition
    from rocksdict import Options, Rdict, WriteBatch

    kind_of = {settings.topic(k.value): k for k in EventKind}
    limits, rules = Limits.of(settings), EventRules.of(settings)
    consumer = backlog_consumer(settings, bootstrap, topics, "ceiling")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=-1,
        linger_ms=FAUST_LINGER_MS,
        max_batch_size=FAUST_MAX_BATCH_BYTES,
        max_request_size=settings.deadletter_max_message_bytes,
        **settings.kafka_client_config(),
    )
    db_dir.mkdir(parents=True, exist_ok=True)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    db = Rdict(str(db_dir), options=options)
    cache: dict[int, UserState] = {}

    def load(user_id: int, index: int) -> UserState | None:
        state = cache.get(user_id)
        if state is None:
            raw = db.get(str(user_id).encode())
            state = None if raw is None else decode(raw)
        return state

    await producer.start()
    await consumer.start()
    seen = batches = records = letters = 0
    first = last = 0.0
    committable: dict[Any, int] = {}
    in_flight: deque[tuple[asyncio.Future[Any], dict[Any, int]]] = deque()
    committed_at = time.monotonic()
    try:
        while seen < n:
            fetched = await consumer.getmany(
                timeout_ms=int(1000 * settings.batch_within_s),
                max_records=settings.batch_max_events,
            )
            if not fetched:
                continue
            started = time.time()
            if not first:
                first = time.perf_counter()
            consumed = [
                Consumed(
                    kind_of[m.topic], m.key, m.value, Position(m.topic, tp.partition, m.offset)
                )
                for tp, msgs in fetched.items()
                for m in msgs
            ]
            result = process_batch(
                consumed, load, limits=limits, rules=rules, now=started, worker="ceiling"
            )
            batch = WriteBatch(raw_mode=True)
            by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
            for user_id, (state, index) in result.writes.items():
                key, value = str(user_id).encode(), encode(state)
                batch.put(key, value)
                cache[user_id] = state
                partition = consumed[index].position.partition
                by_partition.setdefault(partition, []).append((key, value))
            db.write(batch)
            sends = [
                await _send_batches(producer, changelog, partition, kvs)
                for partition, kvs in by_partition.items()
            ]
            for index, letter in result.dead_letters:
                item = consumed[index]
                sends.append(
                    await producer.send(
                        deadletter,
                        letter.to_json(),
                        key=letter_key(item.key),
                        partition=item.position.partition,
                    )
                )
            # pipelined like the worker: the batch's offsets become committable when every
            # record it caused is acknowledged, while the next batch is already processed
            ends = {TopicPartition(tp.topic, tp.partition): msgs[-1].offset + 1
                    for tp, msgs in fetched.items()}  # fmt: skip
            in_flight.append((asyncio.gather(*(f for fs in sends for f in _flat(fs))), ends))
            while in_flight and in_flight[0][0].done():
                done, ends_done = in_flight.popleft()
                done.result()  # a failed record fails the run
                committable.update(ends_done)
            if time.monotonic() - committed_at >= settings.commit_interval_s and committable:
                await consumer.commit(committable)
                committed_at = time.monotonic()
            seen += len(consumed)
            batches += 1
            records += len(result.writes)
            letters += len(result.dead_letters)
            last = time.perf_counter()
        for done, ends_done in in_flight:
            await done
            committable.update(ends_done)
        last = time.perf_counter()  # the rate counts until every effect is acknowledged
        await consumer.commit(committable)
    finally:
        await consumer.stop()
        await producer.stop()
        db.close()
    return CeilingRun(
        events=seen,
        seconds=last - first,
        batches=batches,
        changelog_records=records,
        dead_letters=letters,
        changelog_topic=changelog,
        db_path=db_dir,
    )
