"""A worker of this version reads the state a version-1 (JSON) worker left in Kafka.

The changelog is rewritten as version 1 wrote it (no event times of search tokens, so a
user's old tokens stay before the new ones whatever their times), the local tables are
deleted so the worker rebuilds them from that changelog, and new events arrive: every user's
state must be exactly the recomputation, users the new events touched are written back as
version 2 and the others keep their version-1 values, which read back identically.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stream.readback import changelog_topic, read_topic
from stream.state import decode, encode_v1
from stream.topics import create_topics
from tests.eventgen import assert_states_match, make_events, recompute
from tests.integration.test_ingest_kafka import run_until_processed
from tests.streamkit import limits_of, produce, read_changelog, read_rocksdb

pytestmark = pytest.mark.integration


def _raw_rocksdb_values(settings) -> dict[int, bytes]:
    from rocksdict import AccessType, Options, Rdict

    from stream.app import table_dir

    out: dict[int, bytes] = {}
    for path in sorted(table_dir(settings).glob("users-*.db")):
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            out.update({int(k): v for k, v in db.items() if not k.startswith(b"__faust")})
        finally:
            db.close()
    return out


def test_version_1_changelog_is_read_by_a_new_worker(settings, kafka_bootstrap, tmp_path: Path):
    from kafka import KafkaProducer

    create_topics(settings, kafka_bootstrap)
    first = make_events(seed=21, users=120, n=1500)
    produce(settings, kafka_bootstrap, first)
    log = tmp_path / "worker.log"
    run_until_processed(settings, kafka_bootstrap, log)

    # what a version-1 worker would have left: the same states, as JSON, latest per key
    topic = changelog_topic(settings)
    latest = {
        key: (partition, value)
        for partition, key, value in read_topic(settings, kafka_bootstrap, topic)
        if key is not None and value is not None
    }
    assert all(value[:1] == b"\x02" for _, value in latest.values())  # written as version 2
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, (partition, value) in latest.items():
        producer.send(topic, key=key, value=encode_v1(decode(value)), partition=partition)
    producer.flush()
    producer.close()

    from stream.app import table_dir

    shutil.rmtree(table_dir(settings))  # rebuilt from the version-1 changelog
    second = make_events(seed=22, users=40, n=400, start=50_000)  # touches a third of them
    produce(settings, kafka_bootstrap, second)
    run_until_processed(settings, kafka_bootstrap, log)

    limits = limits_of(settings)
    expected = recompute(first + second, limits)
    # version 1 kept no event times of search tokens: a user's old tokens stay before new ones
    before, after = recompute(first, limits), recompute(second, limits)
    for uid in set(before) & set(after):
        tokens = before[uid].search_tokens + after[uid].search_tokens
        expected[uid].search_tokens = tokens[-limits.search_tokens :]
    assert_states_match(read_rocksdb(settings), expected)
    assert_states_match(read_changelog(settings, kafka_bootstrap), expected)
    raw = _raw_rocksdb_values(settings)
    touched = {ev.user_id for _, ev in second}
    assert raw and touched < set(raw)
    assert all(raw[u][:1] == b"\x02" for u in touched)  # rewritten by the new worker
    assert all(raw[u][:1] == b"{" for u in set(raw) - touched)  # still version 1, read as is
