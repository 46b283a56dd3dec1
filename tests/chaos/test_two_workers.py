"""Two workers in one consumer group: kill -9 one under load, restart it; nothing is lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from serving.client import send_request
from stream.events import RecommendationRequest, RecommendationResponse
from stream.lag import wait_caught_up
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from stream.readback import read_topic
from stream.topics import create_topics
from tests.eventgen import assert_states_match, make_events, recompute
from tests.mldata import write_ratings_csv
from tests.streamkit import limits_of, produce, read_changelog, wait_processed
from watchnext.train import run_train

pytestmark = pytest.mark.chaos

REQUEST_USERS = 100_000  # requests go to users the event stream never touches


class _Requests(threading.Thread):
    """10 requests/s until stopped; remembers when each was sent."""

    def __init__(self, settings, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.producer = make_producer(settings, bootstrap, linger_ms=0)
        self.sent: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.wait(0.1):
            rid = f"mw-{n}"
            req = RecommendationRequest(request_id=rid, user_id=REQUEST_USERS + n % 50, k=3)
            sent = time.time()
            send_request(self.producer, self.settings, req).get(timeout=30)  # acknowledged
            self.sent[rid] = sent
            n += 1
        self.producer.close()


def _responses(settings, bootstrap: str) -> dict[str, RecommendationResponse]:
    """Every response on the topic, read up to its end offsets (first answer per request)."""
    out: dict[str, RecommendationResponse] = {}
    for _, _, value in read_topic(settings, bootstrap, settings.topic("responses")):
        r = RecommendationResponse.model_validate_json(value)
        out.setdefault(r.request_id, r)
    return out


def _worker(settings, bootstrap: str, tmp_path: Path, name: str) -> WorkerProcess:
    own = settings.model_copy(update={"data_dir": tmp_path / name, "worker_id": name})
    return WorkerProcess(own, bootstrap, tmp_path / f"{name}.log")


def _partitions(worker: WorkerProcess, topic: str) -> set[int]:
    """Partitions of ``topic`` the worker has consumed from (its consumer-lag gauges)."""
    found = set()
    for line in worker.metrics_text().splitlines():
        if line.startswith("watchnext_consumer_lag_messages{") and f'topic="{topic}"' in line:
            found.add(int(line.split('partition="')[1].split('"')[0]))
    return found


def _applied(worker: WorkerProcess) -> float:
    try:
        return metric_value(worker.metrics_text(), "watchnext_events_total")
    except OSError:
        return 0.0


def test_kill_9_one_of_two_workers_then_restart(settings, kafka_bootstrap, tmp_path) -> None:
    data = tmp_path / "ml"
    write_ratings_csv(data, seed=2, users=30, items=100, per_user=(10, 20))
    settings = settings.model_copy(update={"snapshot_dir": tmp_path / "snap"})
    run_train(data, settings.snapshot_dir, epochs=1)
    create_topics(settings, kafka_bootstrap)
    events = make_events(seed=21, users=400, n=30_000)
    a = _worker(settings, kafka_bootstrap, tmp_path, "worker-a").start()
    b = _worker(settings, kafka_bootstrap, tmp_path, "worker-b").start()
    requests = _Requests(settings, kafka_bootstrap)
    killed, restarted = threading.Event(), threading.Event()
    third = len(events) // 3

    def feed() -> None:
        produce(settings, kafka_bootstrap, events[:third], rate=3000)
        killed.wait(120)
        produce(settings, kafka_bootstrap, events[third : 2 * third], rate=3000)
        restarted.wait(180)
        produce(settings, kafka_bootstrap, events[2 * third :], rate=3000)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        a.wait_ready()
        b.wait_ready()
        a.wait_serving()
        b.wait_serving()
        requests.start()
        feeder.start()
        deadline = time.monotonic() + 90
        while _applied(b) < 2000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _applied(b) >= 2000, "worker b never got a share of the partitions"
        watch_topic = settings.topic("watch")
        a_before = _partitions(a, watch_topic)
        b_before = _partitions(b, watch_topic)
        assert a_before and b_before and not a_before & b_before  # the group split them
        b.kill()  # SIGKILL: no leave-group, no flush
        killed.set()
        # a takes b's partitions once b's session times out, restores their state, goes on
        deadline = time.monotonic() + 120
        while _partitions(a, watch_topic) != set(range(settings.partitions)):
            assert time.monotonic() < deadline, "b's partitions never moved to a"
            time.sleep(0.2)
        while _applied(a) < third and time.monotonic() < deadline:
            time.sleep(0.2)
        b = _worker(settings, kafka_bootstrap, tmp_path, "worker-b").start()
        b.wait_ready(timeout_s=180)
        restarted.set()
        feeder.join(240)
        wait_processed(settings, kafka_bootstrap, timeout_s=240)
        requests.stop.set()
        requests.join(40)
        # every request consumed and committed: its response was flushed before the commit
        wait_caught_up(
            settings, kafka_bootstrap, settings.app_id, [settings.topic("requests")], timeout_s=120
        )
        b_after_restart = _applied(b)
    finally:
        requests.stop.set()
        b.kill()
        assert a.stop() == 0
    assert b_after_restart > 0, "partitions never rebalanced back to the restarted worker"
    assert "rebuilt from changelog" in (tmp_path / "worker-b.log").read_text()
    expected = recompute(events, limits_of(settings))
    states = read_changelog(settings, kafka_bootstrap)
    extra = {u for u in states if u not in expected}
    assert all(u >= REQUEST_USERS for u in extra)  # only the request users' impressions
    assert_states_match({u: s for u, s in states.items() if u in expected}, expected)
    answered = _responses(settings, kafka_bootstrap)
    missing = [rid for rid in requests.sent if rid not in answered]
    errors = [r for r in answered.values() if r.error]
    print(
        f"requests: {len(requests.sent)} sent, {len(requests.sent) - len(missing)} answered, "
        f"{len(missing)} unanswered, {len(errors)} errors"
    )
    assert len(requests.sent) > 100
    assert not missing, f"{len(missing)} requests never answered: {missing[:5]}"
    assert not errors
