"""kill -9 of a worker in the middle of a stream: no event lost, none counted twice."""

from __future__ import annotations

import threading
import time

import pytest

from stream.process import WorkerProcess, metric_value
from stream.topics import create_topics
from tests.eventgen import assert_states_match, make_events, recompute
from tests.streamkit import limits_of, produce, read_changelog, read_rocksdb, wait_processed

pytestmark = pytest.mark.chaos


def test_kill_9_mid_stream_then_restart_gives_exact_state(
    settings, kafka_bootstrap, tmp_path
) -> None:
    create_topics(settings, kafka_bootstrap)
    events = make_events(seed=11, users=400, n=24_000)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, kafka_bootstrap, log).start()
    try:
        _kill_mid_stream_and_recover(settings, kafka_bootstrap, log, worker, events)
    finally:
        worker.kill()


def _kill_mid_stream_and_recover(settings, kafka_bootstrap, log, worker, events) -> None:
    worker.wait_ready()
    producer_done = threading.Event()
    killed = threading.Event()
    half = len(events) // 2

    def feed() -> None:
        # Events keep arriving before and after the kill: the second half waits for it.
        produce(settings, kafka_bootstrap, events[:half], rate=4000)
        killed.wait(timeout=120)
        produce(settings, kafka_bootstrap, events[half:], rate=4000)
        producer_done.set()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    # Kill once the worker has applied part of the stream.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if metric_value(worker.metrics_text(), "watchnext_events_total") > 3000:
            break
        time.sleep(0.1)
    applied_before_kill = metric_value(worker.metrics_text(), "watchnext_events_total")
    worker.kill()
    killed.set()
    assert 3000 < applied_before_kill < len(events)

    worker = WorkerProcess(settings, kafka_bootstrap, log).start()
    try:
        worker.wait_ready()
        feeder.join(timeout=120)
        assert producer_done.is_set()
        wait_processed(settings, kafka_bootstrap)
    finally:
        assert worker.stop() == 0
    text = log.read_text()
    assert "rebuilt from changelog" in text
    # rebuilt before joining (stream.rebuild), not by faust's recovery after it
    rebuilt = [line for line in text.splitlines() if "before joining" in line]
    assert rebuilt and int(rebuilt[-1].split("] ")[1].split()[0]) > 0, rebuilt
    expected = recompute(events, limits_of(settings))
    assert_states_match(read_changelog(settings, kafka_bootstrap), expected)
    assert_states_match(read_rocksdb(settings), expected)
