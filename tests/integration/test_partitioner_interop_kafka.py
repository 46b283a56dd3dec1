"""A librdkafka producer with its default partitioner, on the real broker (issue 16).

confluent-kafka (librdkafka) partitions keys with ``consistent_random`` (CRC32) unless told
otherwise; kafka-python and the worker's own producer use murmur2. For users whose two
partitions differ, events and requests come from both clients: the worker forwards what lands
on the wrong partition (:mod:`stream.routing`), so each user has one state, on its murmur2
partition, and requests from either client are answered from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer as RdProducer

from serving.client import ResponseReader, send_request
from stream.events import EventKind, RecommendationRequest, SearchEvent, WatchEvent
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer
from stream.readback import changelog_topic, read_changelog, read_topic
from stream.routing import crc32_partition, key_partition
from tests.streamkit import produce, wait_processed, with_snapshots

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def _rd_send(rd: RdProducer, topic: str, key: bytes, value: bytes, where: list[int]) -> None:
    """Produce with librdkafka's defaults; ``where`` collects the partitions it chose."""

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        where.append(msg.partition())

    rd.produce(topic, key=key, value=value, on_delivery=delivered)


def test_librdkafka_default_partitioner_reaches_one_state_per_user(
    settings, kafka_bootstrap, tmp_path: Path
) -> None:
    settings = with_snapshots(
        settings, kafka_bootstrap, tmp_path, seed=8, users=40, items=60, per_user=(10, 20), epochs=2
    )
    n = settings.partitions
    users = [
        u for u in range(1000, 1100) if crc32_partition(b"%d" % u, n) != key_partition(b"%d" % u, n)
    ]
    users = users[:3]
    assert len(users) == 3
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    kp = make_producer(settings, kafka_bootstrap)
    rd = RdProducer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    reader = ResponseReader(settings, kafka_bootstrap, from_start=True)
    rd_partitions: dict[bytes, list[int]] = {}
    try:
        worker.wait_ready()
        worker.wait_serving()
        # what a user without state is shown (asked for a probe user, so the test users'
        # states hold no impression of it): the items each test user then watches, so a
        # request answered from a split or missing state would return some of them
        probe = RecommendationRequest(request_id="cold", user_id=999_999, k=5)
        send_request(kp, settings, probe)
        everything = RecommendationRequest(request_id="all", user_id=999_998, k=500)
        send_request(kp, settings, everything)
        kp.flush()
        cold = reader.wait_for("cold")
        assert cold.error is None and len(cold.items) == 5
        catalogue = len(reader.wait_for("all").items)
        first = {u: [it.item_id for it in cold.items] for u in users}
        kafka_python: list[tuple[EventKind, Any]] = []
        for u in users:
            key = b"%d" % u
            where = rd_partitions.setdefault(key, [])
            for n_item, item in enumerate(first[u]):
                watch = WatchEvent(
                    event_id=f"w-{u}-{item}", user_id=u, item_id=item,
                    ts=T0 + 10 * n_item, watch_seconds=60.0,
                )  # fmt: skip
                if n_item % 2 == 0:  # three of five watches from librdkafka
                    _rd_send(rd, settings.topic("watch"), key, watch.to_json(), where)
                else:
                    kafka_python.append((EventKind.WATCH, watch))
            search = SearchEvent(event_id=f"s-{u}", user_id=u, query="sourdough", ts=T0 + 60)
            _rd_send(rd, settings.topic("search"), key, search.to_json(), where)
        assert rd.flush(30) == 0
        produce(settings, kafka_bootstrap, kafka_python)
        # the test is about records librdkafka put elsewhere: it did (CRC32), for every one
        for key, where in rd_partitions.items():
            assert where == [crc32_partition(key, n)] * 4
        wait_processed(settings, kafka_bootstrap)

        # asked from each client for the whole catalogue, a user is answered from the one
        # state: every item but the five they watched (a split state excludes only its part)
        for u in users:
            request = RecommendationRequest(request_id=f"rd-{u}", user_id=u, k=500).to_json()
            _rd_send(rd, settings.topic("requests"), b"%d" % u, request, [])
            whole = RecommendationRequest(request_id=f"kp-{u}", user_id=u, k=500)
            send_request(kp, settings, whole)
        assert rd.flush(30) == 0
        kp.flush()
        for u in users:
            for rid in (f"rd-{u}", f"kp-{u}"):
                answer = reader.wait_for(rid)
                assert answer.error is None, answer.error
                shown = {it.item_id for it in answer.items}
                assert len(shown) == catalogue - 5 and not shown & set(first[u]), rid
        time.sleep(1)  # the impressions of the last answers
        wait_processed(settings, kafka_bootstrap)
        text = worker.metrics_text()
    finally:
        reader.close()
        kp.close()
        assert worker.stop() == 0

    # one state per user, on its murmur2 partition, holding both clients' events once
    homes: dict[int, set[int]] = {}
    for partition, key, _ in read_topic(settings, kafka_bootstrap, changelog_topic(settings)):
        homes.setdefault(int(key), set()).add(partition)
    states = read_changelog(settings, kafka_bootstrap)
    for u in users:
        assert homes[u] == {key_partition(b"%d" % u, n)}
        state = states[u]
        assert state.n_watches == 5 and set(state.watched) == set(first[u])
        assert state.n_searches == 1 and "sourdough" in state.search_tokens

    def misrouted(kind: str) -> float:
        return metric_value(text, "watchnext_misrouted_total", {"topic": settings.topic(kind)})

    assert misrouted("watch") == 3 * len(users)
    assert misrouted("search") == len(users)
    assert misrouted("requests") == len(users)
    # one hint per topic for this producer, naming the setting to change
    log = (tmp_path / "worker.log").read_text()
    hints = [line for line in log.splitlines() if "librdkafka's default partitioner" in line]
    assert len(hints) == 3, hints
    assert all("partitioner=murmur2_random" in h for h in hints)
    # the dead-letter topic stays empty: nothing was refused
    assert not [
        json.loads(v)
        for _, _, v in read_topic(settings, kafka_bootstrap, settings.topic("deadletter"))
    ]
