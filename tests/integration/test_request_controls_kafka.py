"""Request controls on the real broker (issue 16): reply partition and headers, ``exclude``,
``deadline_ms``, takedowns by upload, and ``watchnext recommend`` from a shell."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.client import ask
from stream.events import EventKind, RecommendationRequest, UploadEvent
from stream.process import WorkerProcess, metric_value
from stream.readback import read_changelog
from tests.streamkit import produce, with_snapshots
from watchnext.settings import settings_env

pytestmark = pytest.mark.integration

TRACE = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def _wait_metric(worker: WorkerProcess, name: str, want: float, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while metric_value(worker.metrics_text(), name) != want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not reach {want}")
        time.sleep(0.1)


def test_request_controls_on_the_broker(settings, kafka_bootstrap, tmp_path: Path) -> None:
    settings = with_snapshots(
        settings, kafka_bootstrap, tmp_path, seed=8, users=40, items=60, per_user=(10, 20), epochs=2
    )
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        worker.wait_serving()

        def whole(rid: str, user: int, **kw: object) -> list[int]:
            req = RecommendationRequest(request_id=rid, user_id=user, k=500, **kw)
            resp, _ = ask(settings, kafka_bootstrap, req)
            assert resp.error is None, resp.error
            return [it.item_id for it in resp.items]

        # the answer comes back on the partition asked for, with the request's headers
        for partition in range(settings.partitions):
            req = RecommendationRequest(request_id=f"p{partition}", user_id=7, k=3)
            resp, headers = ask(
                settings,
                kafka_bootstrap,
                req.model_copy(update={"reply_partition": partition}),
                headers=[TRACE],
            )  # ask reads that partition only: the answer was there
            assert resp.error is None and len(resp.items) == 3
            assert headers == [TRACE, ("content-type", b"application/json")]

        # exclude: never returned, whatever else is
        everything = whole("all", 8)
        dropped = everything[:4]
        assert not set(whole("ex", 8, exclude=dropped)) & set(dropped)

        # deadline: past it, the answer is sent marked expired and records no impression
        late = RecommendationRequest(
            request_id="late", user_id=9, k=5, sent_ts=time.time() - 30, deadline_ms=500
        )
        resp, _ = ask(settings, kafka_bootstrap, late)
        assert resp.expired is True and len(resp.items) == 5
        in_time = RecommendationRequest(
            request_id="soon", user_id=10, k=5, sent_ts=time.time(), deadline_ms=60_000
        )
        resp, _ = ask(settings, kafka_bootstrap, in_time)
        assert resp.expired is False

        # takedown: an upload with removed: true stops the item at once, a newer one restores
        top = whole("before", 11)[0]
        down = UploadEvent(item_id=top, ts=time.time(), duration_seconds=600.0, removed=True)
        produce(settings, kafka_bootstrap, [(EventKind.UPLOAD, down)])
        _wait_metric(worker, "watchnext_items_taken_down", 1)
        assert top not in whole("after", 11)
        back = down.model_copy(update={"ts": down.ts + 1, "removed": False})
        produce(settings, kafka_bootstrap, [(EventKind.UPLOAD, back)])
        _wait_metric(worker, "watchnext_items_taken_down", 0)
        assert top in whole("restored", 11)

        # watchnext recommend, as a person types it
        env = {
            **os.environ,
            **settings_env(settings),
            "WATCHNEXT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        }
        out = subprocess.run(
            [sys.executable, "-m", "watchnext", "recommend", "12", "--k", "4", "--exclude",
             ",".join(map(str, dropped))],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[0].startswith("user 12: 4 items (candidates ") and len(lines) == 5
        shown = [int(line.split()[1]) for line in lines[1:]]
        assert len(set(shown)) == 4 and not set(shown) & set(dropped)
        time.sleep(1)
        text = worker.metrics_text()
    finally:
        assert worker.stop() == 0
    assert metric_value(text, "watchnext_requests_total", {"outcome": "expired"}) == 1
    states = read_changelog(settings, kafka_bootstrap)
    assert 9 not in states or not states[9].impressions  # the expired answer counted nothing
    assert len(states[10].impressions) == 5
