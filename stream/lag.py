"""Consumer-group progress from the broker: how far a group is behind the topics' ends.

Tests, the demo and the benchmarks wait on this instead of sleeping: a worker has processed
(and, with at-least-once, durably committed the effects of) everything when its committed
offsets reach the end offsets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from watchnext.settings import Settings


def partition_lag(
    settings: Settings, bootstrap: str, group: str, topics: Iterable[str]
) -> dict[str, int]:
    """``topic/partition`` -> end offset minus ``group``'s committed offset."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    topics = list(topics)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **settings.kafka_client_config())
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **settings.kafka_client_config())
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = consumer.end_offsets(tps)
        committed = admin.list_group_offsets(group).get(group, {})
        lag: dict[str, int] = {}
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag[f"{tp.topic}/{tp.partition}"] = ends[tp] - done
        return lag
    finally:
        consumer.close()
        admin.close()


def wait_caught_up(
    settings: Settings,
    bootstrap: str,
    group: str,
    topics: Iterable[str],
    timeout_s: float = 120.0,
    poll_s: float = 0.5,
) -> float:
    """Block until ``group`` has committed every offset of ``topics``; returns seconds waited."""
    topics = list(topics)
    start = time.monotonic()
    while True:
        lag = partition_lag(settings, bootstrap, group, topics)
        if sum(lag.values()) == 0:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            behind = {tp: n for tp, n in lag.items() if n}
            raise TimeoutError(f"group {group} still behind after {timeout_s:.0f}s: {behind}")
        time.sleep(poll_s)
