"""The freshness overlay on the real broker (issue 17): a worker's fresh watches reach its own
overlay through the fresh-watches topic, and a restarted worker rebuilds the overlay from the
topics alone, without publishing the watches again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving.client import ask
from stream.events import EventKind, RecommendationRequest, UploadEvent, WatchEvent
from stream.process import WorkerProcess, metric_value
from tests.streamkit import produce, with_snapshots

pytestmark = pytest.mark.integration

NEW = (7_000_001, 7_000_002)


def _wait(worker: WorkerProcess, name: str, labels: dict[str, str], want: float) -> None:
    deadline = time.monotonic() + 60
    while metric_value(worker.metrics_text(), name, labels) != want:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {want}"
        time.sleep(0.1)


def test_the_overlay_is_fed_by_the_topic_and_rebuilt_after_a_restart(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    settings = with_snapshots(
        settings, kafka_bootstrap, tmp_path, seed=3, users=30, items=50, per_user=(8, 15), epochs=1
    )
    now = time.time()
    events: list[tuple[EventKind, object]] = []
    for n, item in enumerate(NEW):
        events.append((EventKind.UPLOAD, UploadEvent(item_id=item, ts=now, duration_seconds=300.0)))
        for user in range(1, 5):  # users 1-4 have histories from the ratings
            watch = WatchEvent(
                event_id=f"fresh-{item}-{user}",
                user_id=user,
                item_id=item,
                ts=now + n + user / 10,
                watch_seconds=200.0,
            )
            events.append((EventKind.WATCH, watch))
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        worker.wait_serving()
        produce(settings, kafka_bootstrap, events)
        _wait(worker, "watchnext_overlay_items", {"kind": "watched"}, len(NEW))
        text = worker.metrics_text()
        assert metric_value(text, "watchnext_fresh_watches_sent_total") == 8
        assert metric_value(text, "watchnext_fresh_watches_total", {"outcome": "folded"}) == 8
        # a user who watched neither gets them among the candidates, before any retrain
        resp, _ = ask(
            settings, kafka_bootstrap, RecommendationRequest(request_id="r", user_id=9, k=200)
        )
        assert resp.error is None
        assert set(NEW) <= {it.item_id for it in resp.items}
    finally:
        assert worker.stop() == 0
    again = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker2.log").start()
    try:
        again.wait_ready()
        again.wait_serving()
        _wait(again, "watchnext_overlay_items", {"kind": "watched"}, len(NEW))  # from the topics
        text = again.metrics_text()
        assert metric_value(text, "watchnext_fresh_watches_sent_total") == 0  # nothing re-sent
        assert metric_value(text, "watchnext_fresh_watches_total", {"outcome": "folded"}) == 8
    finally:
        assert again.stop() == 0
