"""Read the users table back from outside the worker: from its changelog or its RocksDB files.

The changelog (compacted topic ``<app_id>-users-changelog``) is the durable table; reading it to
the end gives every user's latest value. Reading the RocksDB files (read-only) shows what a
worker holds locally. Tests compare both with a plain recomputation; the demo and
``watchnext state`` print from the changelog.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from stream.contract import EventRules, decode_event
from stream.events import USER_EVENT_KINDS, EventKind, InvalidEvent
from stream.routing import forwarded_elsewhere
from stream.state import UserState, decode
from watchnext.settings import Settings


def changelog_topic(settings: Settings, table: str = "users") -> str:
    """faust's changelog topic name for a table."""
    return f"{settings.app_id}-{table}-changelog"


def read_partition(
    consumer: Any, topic: str, partition: int, deadline: float, max_records: int = 5000
) -> Iterator[list[Any]]:
    """Chunks of the records of one partition (kafka-python ``ConsumerRecord``s, offset order),
    from its beginning up to the end offset seen at the start; TimeoutError past ``deadline``
    (a ``time.monotonic()`` value). ``consumer`` is a kafka-python consumer without a group."""
    from kafka import TopicPartition

    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    while consumer.position(tp) < end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic}[{partition}] did not finish in time")
        for records in consumer.poll(timeout_ms=500, max_records=max_records).values():
            yield [rec for rec in records if rec.offset < end]


def read_topic(
    settings: Settings,
    bootstrap: str,
    topic: str,
    timeout_s: float = 60.0,
    *,
    skip_forwarded: bool = False,
) -> Iterator[tuple[int, bytes | None, bytes | None]]:
    """Every record of ``topic`` as (partition, key, value), partition by partition in offset
    order, up to the end offsets seen at the start; with ``skip_forwarded``, without the
    originals a worker forwards to their key's partition (:mod:`stream.routing`)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_client_config(),
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + timeout_s
        for p in sorted(parts):
            for chunk in read_partition(consumer, topic, p, deadline):
                for rec in chunk:
                    if skip_forwarded and forwarded_elsewhere(
                        rec.key, p, settings.partitions, rec.headers
                    ):
                        continue
                    yield p, rec.key, rec.value
    finally:
        consumer.close()


def read_changelog(
    settings: Settings, bootstrap: str, timeout_s: float = 60.0
) -> dict[int, UserState]:
    """Latest value per user from the changelog, read up to the end offsets seen at the start."""
    states: dict[int, UserState] = {}
    for _, key, value in read_topic(settings, bootstrap, changelog_topic(settings), timeout_s):
        assert key is not None  # faust always keys changelog records
        if value is None:
            states.pop(int(key), None)
        else:
            states[int(key)] = decode(value)
    return states


def read_user_events(
    settings: Settings, bootstrap: str, timeout_s: float = 120.0
) -> list[tuple[EventKind, Any]]:
    """Every valid event on the user-event topics, topic by topic in partition order (so each
    user's events of one kind keep the order the worker applied them in); invalid records are
    skipped (they went to the dead-letter topic), and so are misrouted originals (their
    forwarded copies are read instead)."""
    # Offline (no future check: the clock has moved on since the worker read them), but with
    # the worker's size limit and key rule, so that what is skipped here is what it refused.
    rules = replace(EventRules.offline(), max_bytes=settings.max_event_bytes, require_key=True)
    out: list[tuple[EventKind, Any]] = []
    for kind in USER_EVENT_KINDS:
        topic = settings.topic(kind.value)
        for _, key, value in read_topic(settings, bootstrap, topic, timeout_s, skip_forwarded=True):
            try:
                event = decode_event(kind, value, key, now=time.time(), rules=rules)
            except InvalidEvent:
                continue
            out.append((kind, event))
    return out


def read_rocksdb(settings: Settings, table: str = "users") -> dict[int, UserState]:
    """Every user value in the worker's local RocksDB partitions (open read-only)."""
    from rocksdict import AccessType, Options, Rdict

    from stream.app import table_dir

    tabledir = table_dir(settings)
    states: dict[int, UserState] = {}
    for db_path in sorted(tabledir.glob(f"{table}-*.db")):
        db = Rdict(str(db_path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                assert isinstance(key, bytes) and isinstance(value, bytes)  # raw_mode
                if key.startswith(b"__faust"):
                    continue  # faust's own bookkeeping (persisted offsets)
                states[int(key)] = decode(value)
        finally:
            db.close()
    return states
