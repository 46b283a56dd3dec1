"""The delivery barrier on the real broker: an offset is never committed past a record whose
effect the broker refused; the send is counted and retried, the partition stops, and once the
broker takes the effect the partition resumes and commits.

The fault is real and deterministic: the dead-letter topic's ``max.message.bytes`` is lowered
below the size of a dead letter, so the broker answers MESSAGE_TOO_LARGE to the dead letter of
an invalid event, until the limit is restored.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.events import EventKind, WatchEvent
from stream.lag import partition_lag
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from stream.topics import create_topics
from tests.streamkit import produce, read_changelog, wait_processed

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def _set_limit(settings, bootstrap: str, value: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    settings.topic("deadletter"),
                    configs={"max.message.bytes": str(value)},
                )
            ]
        )
    finally:
        admin.close()


def _wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_no_commit_past_an_undelivered_dead_letter(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"send_retries": 2, "partitions": 2})
    create_topics(settings, kafka_bootstrap)
    watch = settings.topic("watch")
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    producer = make_producer(settings, kafka_bootstrap)
    try:
        worker.wait_ready()
        ok = [
            (
                EventKind.WATCH,
                WatchEvent(event_id=f"a{i}", user_id=u, item_id=i, ts=T0 + i, watch_seconds=5.0),
            )
            for i, u in enumerate([1, 2, 3, 4] * 5)
        ]
        produce(settings, kafka_bootstrap, ok)
        wait_processed(settings, kafka_bootstrap)
        _set_limit(settings, kafka_bootstrap, 200)  # any dead letter is larger
        bad = producer.send(watch, key=b"1", value=b'{"not": "a watch"}').get(timeout=30)
        after = WatchEvent(event_id="after", user_id=1, item_id=99, ts=T0 + 99, watch_seconds=5.0)
        producer.send(watch, key=b"1", value=after.to_json()).get(timeout=30)
        _wait(
            lambda: metric_value(worker.metrics_text(), "watchnext_partitions_stopped") == 1,
            60,
            "the partition was never stopped",
        )
        text = worker.metrics_text()
        assert metric_value(text, "watchnext_send_failures_total") >= 2
        time.sleep(3)  # several commit intervals: nothing may move past the bad event
        lag = partition_lag(settings, kafka_bootstrap, settings.app_id, [watch])
        assert lag[f"{watch}/{bad.partition}"] == 2, lag  # the bad event and the one after it
        assert worker.proc.poll() is None, "the worker died"
        _set_limit(settings, kafka_bootstrap, settings.deadletter_max_message_bytes)
        wait_processed(settings, kafka_bootstrap, timeout_s=120)  # resumed, committed
        text = worker.metrics_text()
    finally:
        producer.close()
        assert worker.stop() == 0
    assert metric_value(text, "watchnext_partitions_stopped") == 0
    assert metric_value(text, "watchnext_dead_letters_total") == 1
    # the event after the undelivered dead letter was applied exactly once
    state = read_changelog(settings, kafka_bootstrap)[1]
    assert [w.item_id for w in state.history].count(99) == 1
