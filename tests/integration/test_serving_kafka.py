"""The request path on the real broker: request topic → worker (state + snapshots) → response."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.events import EventKind, ProfileEvent, RecommendationResponse, WatchEvent
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from stream.topics import create_topics
from tests.streamkit import produce, read_changelog, wait_processed
from watchnext.train import run_train

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def _ratings(dir_: Path) -> None:
    rng = np.random.default_rng(8)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, 41):
        for k in range(int(rng.integers(10, 20))):
            rows.append(f"{u},{rng.integers(1, 120)},{rng.integers(1, 6)},{1000 + 10 * k + u}")
    dir_.mkdir(parents=True)
    (dir_ / "ratings.csv").write_text("\n".join(rows) + "\n")


def _request(producer: Any, settings, request_id: str, user_id: int, k: int = 5) -> None:
    body = {"request_id": request_id, "user_id": user_id, "k": k}
    producer.send(
        settings.topic("requests"), key=str(user_id).encode(), value=json.dumps(body).encode()
    )
    producer.flush()


def _response(
    settings, bootstrap: str, request_id: str, timeout_s: float = 60
) -> RecommendationResponse:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic("responses"),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=1000,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in consumer:
                if msg.key == request_id.encode():
                    return RecommendationResponse.model_validate_json(msg.value)
    finally:
        consumer.close()
    raise TimeoutError(f"no response to {request_id} within {timeout_s}s")


def test_requests_are_answered_fresh_and_recorded(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    data = tmp_path / "ml"
    _ratings(data)
    settings = settings.model_copy(update={"snapshot_dir": tmp_path / "snap"})
    run_train(data, settings.snapshot_dir, epochs=2)
    create_topics(settings, kafka_bootstrap)
    watched = [3, 5, 8, 13]
    events: list[tuple[EventKind, Any]] = [
        (EventKind.PROFILE, ProfileEvent(user_id=7, ts=T0, event_id="p7", age=30, gender="F")),
        *[
            (
                EventKind.WATCH,
                WatchEvent(
                    event_id=f"w{i}", user_id=7, item_id=i, ts=T0 + 10 * n, watch_seconds=60.0
                ),
            )
            for n, i in enumerate(watched)
        ],
    ]
    produce(settings, kafka_bootstrap, events)
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    producer = make_producer(settings, kafka_bootstrap)
    try:
        worker.wait_ready()
        wait_processed(settings, kafka_bootstrap)
        _request(producer, settings, "r1", 7)
        first = _response(settings, kafka_bootstrap, "r1")
        assert first.error is None, first.error
        ids = [it.item_id for it in first.items]
        assert len(ids) == 5 and len(set(ids)) == 5
        assert not set(ids) & set(watched)
        assert set(first.model_versions) == {"candidates", "ranker"}
        assert {"vector", "retrieve", "rank", "worker"} <= set(first.latency_ms)
        assert all(
            it.expected_watch_seconds and it.expected_watch_seconds > 0 for it in first.items
        )

        # freshness: watching the top item removes it from the very next answer
        top = ids[0]
        produce(
            settings,
            kafka_bootstrap,
            [
                (
                    EventKind.WATCH,
                    WatchEvent(
                        event_id="w-new", user_id=7, item_id=top, ts=T0 + 100, watch_seconds=90.0
                    ),
                )
            ],
        )
        wait_processed(settings, kafka_bootstrap)
        _request(producer, settings, "r2", 7)
        second = _response(settings, kafka_bootstrap, "r2")
        assert second.error is None and top not in [it.item_id for it in second.items]

        # an unknown user is served from priors; a malformed request gets an error response
        _request(producer, settings, "r3", 99_999)
        unknown = _response(settings, kafka_bootstrap, "r3")
        assert unknown.error is None and len(unknown.items) == 5
        producer.send(
            settings.topic("requests"), key=b"7", value=b'{"request_id": "bad-1", "k": 3}'
        )
        producer.flush()
        bad = _response(settings, kafka_bootstrap, "bad-1")
        assert bad.error is not None and "invalid request" in bad.error and not bad.items
        time.sleep(2)  # the worker produces the impression of r3 after answering
        wait_processed(settings, kafka_bootstrap)
        text = worker.metrics_text()
    finally:
        producer.close()
        assert worker.stop() == 0
    assert metric_value(text, "watchnext_requests_total", {"outcome": "ok"}) == 3
    assert metric_value(text, "watchnext_requests_total", {"outcome": "invalid"}) == 1
    # every event refreshed its user's vector; r2 (after the new watch) used the fresh one
    assert metric_value(text, "watchnext_vectors_refreshed_total") >= 2
    assert metric_value(text, "watchnext_event_to_vector_seconds_count") >= len(events) + 1
    assert metric_value(text, "watchnext_vector_cache_total", {"outcome": "hit"}) >= 1
    # what was shown went back through the impression topic into the user's counters
    state = read_changelog(settings, kafka_bootstrap)[7]
    shown = set(ids) | {it.item_id for it in second.items}
    assert shown <= set(state.impressions)
    assert (
        state.impressions[ids[1]].shown == 2
        if ids[1] in [it.item_id for it in second.items]
        else True
    )
