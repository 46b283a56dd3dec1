"""Online attribution on the real broker (issue 17): a canary pair serves half the users, the
newest pair the others; watches carrying a page's request id are credited to the versions that
chose the page, and each pair gets its own shown / watched / watch-seconds figures."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from serving.client import ResponseReader, send_request
from serving.recommend import latest_snapshots
from serving.traffic_split import in_canary
from stream.events import EventKind, RecommendationRequest, WatchEvent
from stream.lag import wait_caught_up
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from tests.snapshotkit import publish_copy
from tests.streamkit import produce, with_snapshots

pytestmark = pytest.mark.integration

USERS = range(1, 41)
K = 5


def test_two_pairs_side_by_side_get_their_own_figures(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    settings = with_snapshots(
        settings, kafka_bootstrap, tmp_path, seed=5, users=40, items=60, per_user=(10, 20), epochs=1
    )
    newest = latest_snapshots(settings.snapshot_dir)
    assert newest is not None
    # the canary: the same weights under another version, older, so the poll keeps the newest
    publish_copy(newest, settings.snapshot_dir, "canary-1", time.time() - 3600)
    settings = settings.model_copy(update={"canary_version": "canary-1", "canary_share": 0.5})
    canary_users = {u for u in USERS if in_canary(u, 0.5)}
    assert 10 < len(canary_users) < 30  # both groups are there to compare
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    producer = make_producer(settings, kafka_bootstrap)
    reader = ResponseReader(settings, kafka_bootstrap)
    try:
        worker.wait_ready()
        worker.wait_serving()
        deadline = time.monotonic() + 60
        while not metric_value(worker.metrics_text(), "watchnext_canary_info"):
            assert time.monotonic() < deadline, "the canary pair was never loaded"
            time.sleep(0.1)
        for u in USERS:
            send_request(
                producer, settings, RecommendationRequest(request_id=f"r{u}", user_id=u, k=K)
            )
        producer.flush()
        answers = {u: reader.wait_for(f"r{u}", timeout_s=60) for u in USERS}
        for u, answer in answers.items():
            assert answer.error is None and len(answer.items) == K
            want = "canary-1" if u in canary_users else newest[0].name.removeprefix("candidates-")
            assert answer.model_versions["candidates"] == want, u

        # each user watches the page's top item (credited), an item the page did not show
        # with the same request id (not credited) and the second item without one (not credited)
        events = []
        credited: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        for u, answer in answers.items():
            shown = [it.item_id for it in answer.items]
            off_page = next(i for i in range(1, 61) if i not in shown)
            version = answer.model_versions["candidates"]
            for n, (item, rid) in enumerate(
                [(shown[0], f"r{u}"), (off_page, f"r{u}"), (shown[1], None)]
            ):
                secs = 100.0 + u
                events.append(
                    (
                        EventKind.WATCH,
                        WatchEvent(
                            event_id=f"w{u}-{n}",
                            user_id=u,
                            item_id=item,
                            ts=time.time(),
                            watch_seconds=secs,
                            request_id=rid,
                        ),
                    )
                )
                if n == 0:
                    credited[version] += 1
                    seconds[version] += secs
        produce(settings, kafka_bootstrap, events)
        wait_caught_up(settings, kafka_bootstrap, settings.app_id, [settings.topic("watch")])
        text = worker.metrics_text()
        for version, watches in credited.items():
            labels = {"candidates": version}
            users_of = len(canary_users) if version == "canary-1" else 40 - len(canary_users)
            assert watches == users_of
            assert metric_value(text, "watchnext_shown_total", labels) == K * users_of
            assert metric_value(text, "watchnext_attributed_watches_total", labels) == watches
            assert metric_value(
                text, "watchnext_attributed_watch_seconds_total", labels
            ) == pytest.approx(seconds[version])
        assert len(credited) == 2
    finally:
        reader.close()
        producer.close()
        assert worker.stop() == 0
