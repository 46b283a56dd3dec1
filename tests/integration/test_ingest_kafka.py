"""Events through the real broker into a faust worker's RocksDB table, checked against a
plain recomputation; bad input dead-lettered; the table rebuilt from its changelog."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from stream.events import DeadLetter, EventKind
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from stream.topics import create_topics
from tests.eventgen import assert_states_match, make_events, recompute
from tests.streamkit import limits_of, produce, read_changelog, read_rocksdb, wait_processed

pytestmark = pytest.mark.integration


def test_state_of_many_users_equals_recomputation(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    create_topics(settings, kafka_bootstrap)
    events = make_events(seed=1, users=300, n=6000)
    produce(settings, kafka_bootstrap, events)
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        wait_processed(settings, kafka_bootstrap)
        text = worker.metrics_text()
    finally:
        assert worker.stop() == 0
    expected = recompute(events, limits_of(settings))
    assert_states_match(read_changelog(settings, kafka_bootstrap), expected)
    assert_states_match(read_rocksdb(settings), expected)
    dup = len(events) - len({ev.event_id for _, ev in events})
    assert dup > 0
    assert metric_value(text, "watchnext_events_total", {"outcome": "duplicate"}) == dup
    assert metric_value(text, "watchnext_events_total", {"outcome": "dead_letter"}) == 0


def run_until_processed(settings, bootstrap: str, log: Path) -> str:
    """Start a worker, wait until it committed every input, stop it cleanly; return metrics."""
    worker = WorkerProcess(settings, bootstrap, log).start()
    try:
        worker.wait_ready()
        wait_processed(settings, bootstrap)
        return worker.metrics_text()
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; worker metrics:\n{worker.metrics_text()[-3000:]}") from exc
    finally:
        assert worker.stop() == 0


def _read_dead_letters(
    settings, bootstrap: str, expect: int, timeout_s: float = 30
) -> list[DeadLetter]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic("deadletter"),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=2000,
    )
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(letters) < expect and time.monotonic() < deadline:
            for msg in consumer:
                letters.append(DeadLetter.model_validate_json(msg.value))
    finally:
        consumer.close()
    return letters


def test_bad_input_is_dead_lettered_and_valid_neighbours_apply(
    settings, kafka_bootstrap, tmp_path
) -> None:
    create_topics(settings, kafka_bootstrap)
    good = make_events(seed=2, users=5, n=40, duplicates=0)
    watch = settings.topic("watch")
    base = {
        "schema_version": 1,
        "event_id": "x",
        "user_id": 1,
        "item_id": 1,
        "ts": 1.6e9,
        "watch_seconds": 10,
    }
    bad: list[tuple[bytes, bytes, str]] = [
        (b"1", b"{not json", "malformed JSON"),
        (
            b"1",
            json.dumps({**base, "user_id": "one"}).encode(),
            "user_id: Input should be a valid integer",
        ),
        (
            b"1",
            json.dumps({k: v for k, v in base.items() if k != "item_id"}).encode(),
            "item_id: Field required",
        ),
        (b"1", json.dumps({**base, "schema_version": 7}).encode(), "unsupported schema_version 7"),
        (
            b"1",
            json.dumps({**base, "pad": "x" * (settings.max_event_bytes + 10)}).encode(),
            "exceeds",
        ),
        (b"1", json.dumps({**base, "watch_seconds": -3}).encode(), "watch_seconds"),
        (b"1", json.dumps({**base, "ts": time.time() + 86400 * 365}).encode(), "in the future"),
        (b"2", json.dumps(base).encode(), "does not match id 1"),
    ]
    producer = make_producer(settings, kafka_bootstrap)
    half = len(good) // 2
    produce(settings, kafka_bootstrap, good[:half], producer=producer)
    for key, value, _ in bad:
        producer.send(watch, key=key, value=value)
    produce(settings, kafka_bootstrap, good[half:], producer=producer)
    producer.close()

    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        wait_processed(settings, kafka_bootstrap)
        text = worker.metrics_text()
        assert worker.proc is not None and worker.proc.poll() is None, (
            "worker must survive bad input"
        )
    finally:
        assert worker.stop() == 0
    letters = _read_dead_letters(settings, kafka_bootstrap, expect=len(bad))
    assert len(letters) == len(bad)
    # the exact bytes are kept (nothing is lost), or for a payload over the dead-letter limit
    # its first bytes, its length and its sha256 (so a dead letter always fits its topic)
    by_payload = {
        dl.raw_sha256 if dl.raw_truncated else base64.b64decode(dl.raw_b64): dl for dl in letters
    }
    for key, value, reason in bad:
        if len(value) > settings.deadletter_payload_bytes:
            dl = by_payload[hashlib.sha256(value).hexdigest()]
            assert dl.raw_bytes == len(value) and value.startswith(base64.b64decode(dl.raw_b64))
        else:
            dl = by_payload[value]
        assert reason in dl.error, (reason, dl.error)
        assert dl.source_topic == watch and base64.b64decode(dl.key_b64 or "") == key
    assert metric_value(text, "watchnext_dead_letters_total") == len(bad)
    assert metric_value(text, "watchnext_dead_letters_total", {"reason": "oversize"}) == 1
    assert_states_match(
        read_changelog(settings, kafka_bootstrap), recompute(good, limits_of(settings))
    )


def test_table_rebuilt_from_changelog_after_rocksdb_is_deleted(
    settings, kafka_bootstrap, tmp_path
) -> None:
    create_topics(settings, kafka_bootstrap)
    first = make_events(seed=3, users=200, n=3000)
    produce(settings, kafka_bootstrap, first)
    log = tmp_path / "worker.log"
    run_until_processed(settings, kafka_bootstrap, log)

    # New events after the loss: an off-by-one in recovery would drop or double one of them.
    second = make_events(seed=4, users=200, n=1500, start=10_000)
    wipe_tables_then_ingest(settings, kafka_bootstrap, log, first, second)


def wipe_tables_then_ingest(settings, bootstrap: str, log: Path, before: list, more: list) -> None:
    """Delete the worker's local tables, send ``more`` and run it again: its tables (rebuilt
    from the changelog) and the changelog must equal the recomputation of all events."""
    from stream.app import table_dir

    tables = table_dir(settings)
    assert any(tables.rglob("users-*.db"))
    shutil.rmtree(tables)
    produce(settings, bootstrap, more)
    run_until_processed(settings, bootstrap, log)
    expected = recompute(before + more, limits_of(settings))
    assert_states_match(read_rocksdb(settings), expected)
    assert_states_match(read_changelog(settings, bootstrap), expected)


def test_uploads_fill_the_item_table(settings, kafka_bootstrap, tmp_path) -> None:
    from stream.events import UploadEvent

    create_topics(settings, kafka_bootstrap)
    ups = [
        (
            EventKind.UPLOAD,
            UploadEvent(item_id=i, ts=100.0 + i, duration_seconds=60.0 + i, channel=f"c{i % 3}"),
        )
        for i in range(50)
    ]
    produce(settings, kafka_bootstrap, ups + ups[:10])  # re-sent uploads change nothing
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        from stream.lag import wait_caught_up

        wait_caught_up(settings, kafka_bootstrap, settings.app_id, [settings.topic("upload")])
        text = worker.metrics_text()
    finally:
        worker.stop()
    assert (
        metric_value(text, "watchnext_events_total", {"kind": "upload", "outcome": "applied"}) == 50
    )
    assert (
        metric_value(text, "watchnext_events_total", {"kind": "upload", "outcome": "duplicate"})
        == 10
    )
