"""Hot swap under steady request load on the real broker: invisible to clients."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from serving.client import send_request
from stream.announce import announcement, publish
from stream.events import RecommendationRequest, RecommendationResponse
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from stream.topics import create_topics
from tests.mldata import write_ratings_csv
from watchnext.train import run_train

pytestmark = pytest.mark.integration


def _versions(pair: tuple[Path, Path]) -> dict[str, str]:
    return {
        "candidates": pair[0].name.removeprefix("candidates-"),
        "ranker": pair[1].name.removeprefix("ranker-"),
    }


class _Load(threading.Thread):
    """Open-loop requests at ``rate``/s, each with a unique id, until stopped."""

    def __init__(self, settings, bootstrap: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate = settings, rate
        self.producer = make_producer(settings, bootstrap, linger_ms=0)
        self.sent: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            n = len(self.sent)
            rid = f"load-{n}"
            send_request(
                self.producer,
                self.settings,
                RecommendationRequest(request_id=rid, user_id=1 + n % 30, k=5),
            )
            self.sent.append(rid)
            pause = started + (n + 1) / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        self.producer.flush()
        self.producer.close()


def _all_responses(settings, bootstrap: str) -> list[RecommendationResponse]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic("responses"),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=3000,
    )
    out = [RecommendationResponse.model_validate_json(m.value) for m in consumer]
    consumer.close()
    return out


def test_three_swaps_and_a_refusal_under_load(settings, kafka_bootstrap, tmp_path: Path) -> None:
    data = tmp_path / "ml"
    write_ratings_csv(data, seed=11, users=30, items=100, per_user=(10, 20))
    settings = settings.model_copy(
        update={"snapshot_dir": tmp_path / "snap", "snapshot_poll_s": 600.0}
    )
    pairs = [run_train(data, settings.snapshot_dir, epochs=1, seed=0)]
    create_topics(settings, kafka_bootstrap)
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    load = _Load(settings, kafka_bootstrap, rate=25.0)
    try:
        worker.wait_ready()
        worker.wait_serving()
        load.start()
        for swap in range(1, 4):
            time.sleep(2.0)  # steady load on the current version
            pairs.append(run_train(data, settings.snapshot_dir, epochs=1, seed=swap))
            publish(settings, kafka_bootstrap, announcement(_versions(pairs[-1])))
            worker.wait_serving(swaps=1 + swap, timeout_s=60)
        # a tampered pair is announced: refused, the last good pair keeps serving
        time.sleep(1.1)
        bad = run_train(data, settings.snapshot_dir, epochs=1, seed=9)
        weights = bad[0] / "weights.safetensors"
        blob = bytearray(weights.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        weights.write_bytes(bytes(blob))
        publish(settings, kafka_bootstrap, announcement(_versions(bad)))
        deadline = time.monotonic() + 30
        while metric_value(worker.metrics_text(), "watchnext_snapshot_refused_total") < 1:
            assert time.monotonic() < deadline, "the tampered snapshot was not refused"
            time.sleep(0.2)
        time.sleep(2.0)
        load.stop.set()
        load.join(10)
        time.sleep(3.0)  # the last requests are answered
        text = worker.metrics_text()
    finally:
        load.stop.set()
        assert worker.stop() == 0
    responses = _all_responses(settings, kafka_bootstrap)
    counts = Counter(r.request_id for r in responses)
    assert len(load.sent) > 200
    assert set(counts) == set(load.sent), "dropped (or unexpected) responses"
    assert max(counts.values()) == 1, "duplicated responses"
    assert not [r for r in responses if r.error], "failed requests during swaps"
    # in request order (responses are spread over partitions, so topic order is not it)
    by_number = sorted(responses, key=lambda r: int(r.request_id.split("-")[1]))
    served = [r.model_versions["candidates"] for r in by_number]
    order = [_versions(p)["candidates"] for p in pairs]
    assert served[0] == order[0] and served[-1] == order[-1]
    assert set(served) == set(order)  # every swap became visible to clients
    assert _versions(bad)["candidates"] not in served
    assert metric_value(text, "watchnext_snapshot_swaps_total") == 4
    assert metric_value(text, "watchnext_snapshot_refused_total") == 1
