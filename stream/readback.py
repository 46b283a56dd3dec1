"""Read the users table back from outside the worker: from its changelog or its RocksDB files.

The changelog (compacted topic ``<app_id>-users-changelog``) is the durable table; reading it to
the end gives every user's latest value. Reading the RocksDB files (read-only) shows what a
worker holds locally. Tests compare both with a plain recomputation; the demo and
``watchnext state`` print from the changelog.
"""

from __future__ import annotations

import time

from stream.state import UserState, decode
from watchnext.settings import Settings


def changelog_topic(settings: Settings, table: str = "users") -> str:
    """faust's changelog topic name for a table."""
    return f"{settings.app_id}-{table}-changelog"


def read_changelog(
    settings: Settings, bootstrap: str, timeout_s: float = 60.0
) -> dict[int, UserState]:
    """Latest value per user from the changelog, read up to the end offsets seen at the start."""
    from kafka import KafkaConsumer, TopicPartition

    topic = changelog_topic(settings)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_client_config(),
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return {}
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        states: dict[int, UserState] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over {timeout_s}s")
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                for rec in records:
                    if rec.value is None:
                        states.pop(int(rec.key), None)
                    else:
                        states[int(rec.key)] = decode(rec.value)
        return states
    finally:
        consumer.close()


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
