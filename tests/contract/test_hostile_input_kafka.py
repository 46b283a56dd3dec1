"""Hostile input through the real worker on the real broker: every message on the request topic
gets exactly one response (an error response and a dead letter when invalid), a 1 MiB event is
dead-lettered without killing the worker, and keyless events are refused with a reason.

These are the shapes that were committed unanswered or crashed the worker before: a 125–128
character request id (its impression id overflowed the id limit after the answer was computed),
a deeply nested body (RecursionError while reading the request id), a lone surrogate as request
id, a request without a key, and a 1 MiB watch event (its dead letter was larger than the
producer accepts and crashed faust's producer buffer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from serving.client import ResponseReader
from stream.contract import synthetic_request_id
from stream.events import DeadLetter, EventKind, WatchEvent
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from tests.streamkit import produce, wait_processed, with_snapshots

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def _request(rid: Any, user_id: int = 7, **extra: Any) -> bytes:
    return json.dumps({"request_id": rid, "user_id": user_id, "k": 3, **extra}).encode()


def _read_all(settings, bootstrap: str, topic: str, expect: int, timeout_s: float = 60) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=1000,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            out.extend(consumer)
    finally:
        consumer.close()
    return out


@pytest.mark.timeout(600)
def test_every_request_gets_one_answer_and_big_events_do_not_kill_the_worker(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    settings = with_snapshots(
        settings, kafka_bootstrap, tmp_path, seed=3, users=30, items=80, per_user=(8, 15), epochs=1
    )
    long_id = "r" * 126  # "imp-" + id is 130 characters
    requests: list[tuple[bytes | None, bytes, str]] = [  # key, value, expected response id
        (b"7", _request("ok-1"), "ok-1"),
        (b"7", _request(long_id), long_id),
        (b"7", _request("x" * 128), "x" * 128),
        (b"7", b"[" * 100_000 + b"]" * 100_000, ""),  # nested: no readable id
        (b"7", b'{"request_id": "\\ud800", "user_id": 7}', ""),  # lone surrogate
        (None, _request("no-key"), "no-key"),  # no Kafka key
        (b"8", _request("wrong-key"), "wrong-key"),  # key is not the user id
        (b"7", b'{"request_id": "dup", "request_id": "dup2", "user_id": 7}', ""),
        (b"7", b"not json at all", ""),
        (b"7", _request("ms-ts", context={"ts": 1_794_315_522_350}), "ms-ts"),
        (b"7", _request("ok-2"), "ok-2"),
    ]
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    producer = make_producer(settings, kafka_bootstrap)
    reader = ResponseReader(settings, kafka_bootstrap, from_start=True)
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
                        event_id=f"w{i}", user_id=7, item_id=i, ts=T0 + i, watch_seconds=60.0
                    ),
                )
                for i in (1, 2, 3)
            ],
        )
        # 1 MiB less the record overhead, the most the broker's default message.max.bytes takes
        head = {"event_id": "big", "user_id": 7, "item_id": 1, "ts": T0, "watch_seconds": 1.0}
        base = len(json.dumps({**head, "pad": ""}).encode())
        big = json.dumps({**head, "pad": "x" * ((1 << 20) - 256 - base)}).encode()
        assert len(big) == (1 << 20) - 256
        watch_topic = settings.topic("watch")
        big_producer = make_producer(settings, kafka_bootstrap, max_request_size=4 << 20)
        big_producer.send(watch_topic, key=b"7", value=big).get(timeout=30)
        big_producer.close()
        keyless = WatchEvent(event_id="nokey", user_id=7, item_id=2, ts=T0, watch_seconds=1.0)
        producer.send(watch_topic, key=None, value=keyless.to_json()).get(timeout=30)
        sent = []
        for key, value, rid in requests:
            meta = producer.send(settings.topic("requests"), key=key, value=value).get(timeout=30)
            sent.append((meta.partition, meta.offset, rid))
        producer.flush()
        wait_processed(settings, kafka_bootstrap)
        # the worker is alive and answering after all of it
        ids = {rid or synthetic_request_id(settings.topic("requests"), p, o) for p, o, rid in sent}
        answers = {rid: reader.wait_for(rid, timeout_s=60) for rid in sorted(ids)}
        assert worker.proc.poll() is None, "the worker died"
        text = worker.metrics_text()
    finally:
        producer.close()
        reader.close()
        assert worker.stop() == 0
    assert answers["ok-1"].error is None and answers["ok-1"].items
    assert answers["ok-2"].error is None and answers["ok-2"].items
    assert answers[long_id].error is None and answers[long_id].items  # impression id hashed
    assert answers["x" * 128].error is None
    invalid = [rid for rid in ids if rid not in ("ok-1", "ok-2", long_id, "x" * 128)]
    for rid in invalid:
        assert answers[rid].error and answers[rid].error.startswith("invalid request"), rid
    assert "seconds expected" in answers["ms-ts"].error
    assert "key" in answers["no-key"].error and "key" in answers["wrong-key"].error
    # exactly one response per request: count them on the topic
    responses = _read_all(settings, kafka_bootstrap, "responses", expect=len(requests))
    per_id: dict[str, int] = {}
    for msg in responses:
        rid = json.loads(msg.value)["request_id"]
        per_id[rid] = per_id.get(rid, 0) + 1
    assert per_id == {rid: 1 for rid in ids}
    # dead letters: one per invalid request, the big event (capped) and the keyless event
    letters = [
        DeadLetter.model_validate_json(m.value)
        for m in _read_all(settings, kafka_bootstrap, "deadletter", expect=len(invalid) + 2)
    ]
    by_topic: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_topic.setdefault(letter.source_topic, []).append(letter)
    assert len(by_topic[settings.topic("requests")]) == len(invalid)
    watch_letters = by_topic[watch_topic]
    assert len(watch_letters) == 2
    big_letter = next(x for x in watch_letters if x.raw_truncated)
    assert big_letter.raw_bytes == len(big)
    assert big_letter.raw_sha256 == hashlib.sha256(big).hexdigest()
    assert big.startswith(base64.b64decode(big_letter.raw_b64))
    nokey = next(x for x in watch_letters if not x.raw_truncated)
    assert nokey.key_b64 is None and "key" in nokey.error
    assert all(len(x.error) <= 300 for x in letters)
    assert metric_value(text, "watchnext_requests_total", {"outcome": "invalid"}) == len(invalid)
    assert metric_value(text, "watchnext_send_failures_total") == 0
