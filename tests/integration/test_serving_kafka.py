"""The request path on the real broker: request topic → worker (state + snapshots) → response."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from serving.client import ResponseReader, send_request
from stream.events import EventKind, ProfileEvent, RecommendationRequest, WatchEvent
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from stream.topics import create_topics
from tests.mldata import write_ratings_csv
from tests.streamkit import produce, read_changelog, wait_processed, with_snapshots
from watchnext.train import run_train

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def _ask(
    producer: Any, settings, reader: ResponseReader, request_id: str, user_id: int, k: int = 5
):
    send_request(
        producer, settings, RecommendationRequest(request_id=request_id, user_id=user_id, k=k)
    )
    producer.flush()
    return reader.wait_for(request_id)


def test_requests_are_answered_fresh_and_recorded(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    settings = with_snapshots(
        settings,
        kafka_bootstrap,
        tmp_path,
        seed=8,
        users=40,
        items=120,
        per_user=(10, 20),
        epochs=2,
    )
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
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    producer = make_producer(settings, kafka_bootstrap)
    reader = ResponseReader(settings, kafka_bootstrap, from_start=True)
    try:
        worker.wait_ready()
        worker.wait_serving()  # events before the first snapshot have no model to refresh with
        produce(settings, kafka_bootstrap, events)
        wait_processed(settings, kafka_bootstrap)
        first = _ask(producer, settings, reader, "r1", 7)
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
        second = _ask(producer, settings, reader, "r2", 7)
        assert second.error is None and top not in [it.item_id for it in second.items]

        # an unknown user is served from priors; a malformed request gets an error response
        unknown = _ask(producer, settings, reader, "r3", 99_999)
        assert unknown.error is None and len(unknown.items) == 5
        producer.send(
            settings.topic("requests"), key=b"7", value=b'{"request_id": "bad-1", "k": 3}'
        )
        producer.flush()
        bad = reader.wait_for("bad-1")
        assert bad.error is not None and "invalid request" in bad.error and not bad.items
        time.sleep(2)  # the worker produces the impression of r3 after answering
        wait_processed(settings, kafka_bootstrap)
        text = worker.metrics_text()
    finally:
        reader.close()
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


def test_an_item_shown_and_not_watched_is_demoted(settings, kafka_bootstrap, tmp_path) -> None:
    """Paper §4.1: the ranker sees how often an item was shown to the user; an item shown and
    not watched must not stay on top. Snapshots come from a synthetic world whose users click
    an item less after ignoring it (fatigue), with impressions recorded by the worker itself."""
    from model.synth import SynthConfig
    from watchnext.train import run_train_synthetic

    world = SynthConfig(seed=1, n_users=1000, n_items=2000, n_topics=20, sessions_per_user=12)
    snapshots = tmp_path / "snap"
    run_train_synthetic(replace(world, fatigue=0.3), snapshots, epochs=5, progress=False)
    settings = settings.model_copy(update={"snapshot_dir": snapshots})
    create_topics(settings, kafka_bootstrap)
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    producer = make_producer(settings, kafka_bootstrap)
    reader = ResponseReader(settings, kafka_bootstrap, from_start=True)
    users = (3, 4, 5)
    try:
        worker.wait_ready()
        worker.wait_serving()
        produce(
            settings,
            kafka_bootstrap,
            [
                (
                    EventKind.WATCH,
                    WatchEvent(
                        event_id=f"w{u}-{n}",
                        user_id=u,
                        item_id=(item * (u + 3)) % 2000,
                        ts=T0 + n,
                        watch_seconds=100.0,
                    ),
                )
                for u in users
                for n, item in enumerate((1, 2, 3, 5, 8))
            ],
        )
        wait_processed(settings, kafka_bootstrap)
        for u in users:
            shown = []
            for n in range(3):  # k=1: only the top item is shown (and recorded) each time
                answer = _ask(producer, settings, reader, f"d{u}-{n}", u, k=1)
                assert answer.error is None and len(answer.items) == 1
                shown.append(answer.items[0].item_id)
                time.sleep(1.0)  # the impression leaves the worker just before the answer
                wait_processed(settings, kafka_bootstrap)
            assert shown[1] != shown[0], f"user {u}: item {shown[0]} stayed on top: {shown}"
            state = read_changelog(settings, kafka_bootstrap)[u]
            assert state.impressions[shown[0]].shown >= 1
            assert not {w.item_id for w in state.history} & set(shown)
    finally:
        reader.close()
        producer.close()
        assert worker.stop() == 0


def test_an_announced_snapshot_is_swapped_in_while_serving(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    """A new pair plus an announcement on model-updates → the worker verifies and serves it
    (the periodic poll is set far beyond the test, so only the announcement can trigger it);
    a malformed announcement is ignored."""
    from serving.recommend import latest_snapshots
    from stream.announce import TOPIC_KIND, announcement, publish

    data = tmp_path / "ml"
    write_ratings_csv(data, seed=9, users=30, items=100, per_user=(10, 20))
    settings = settings.model_copy(
        update={"snapshot_dir": tmp_path / "snap", "snapshot_poll_s": 600.0}
    )
    first = run_train(data, settings.snapshot_dir, epochs=1)
    create_topics(settings, kafka_bootstrap)
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    producer = make_producer(settings, kafka_bootstrap)
    reader = ResponseReader(settings, kafka_bootstrap, from_start=True)
    try:
        worker.wait_ready()
        worker.wait_serving()
        before = _ask(producer, settings, reader, "v1", 3)
        assert before.model_versions["candidates"] == first[0].name.removeprefix("candidates-")
        time.sleep(1.1)  # snapshot versions are second-resolution timestamps + pid
        second = run_train(data, settings.snapshot_dir, epochs=1, seed=1)
        assert latest_snapshots(settings.snapshot_dir) == second
        producer.send(settings.topic(TOPIC_KIND), key=b"snapshot", value=b"{not json")
        producer.flush()
        versions = {
            "candidates": second[0].name.removeprefix("candidates-"),
            "ranker": second[1].name.removeprefix("ranker-"),
        }
        publish(settings, kafka_bootstrap, announcement(versions))
        worker.wait_serving(swaps=2, timeout_s=60)
        after = _ask(producer, settings, reader, "v2", 3)
        assert after.error is None and after.model_versions == versions
        text = worker.metrics_text()
    finally:
        reader.close()
        producer.close()
        assert worker.stop() == 0
    assert metric_value(text, "watchnext_announce_to_serve_seconds_count") == 1
    assert metric_value(text, "watchnext_snapshot_refused_total") == 0
