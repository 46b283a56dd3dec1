"""Explicit topic creation: every topic watchnext uses, with its partitions and configs.

The broker runs with ``auto.create.topics.enable=false``; topics are created here (idempotently)
by producers, workers and tests before use, so a typo never silently creates a new topic.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from watchnext.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    """A topic's name, partition count and broker-side configs."""

    name: str
    partitions: int
    configs: dict[str, str]


FRESH_WATCHES = "fresh-watches"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """All topics of a deployment.

    Event and request topics share one partition count so that a user's events, table value
    and requests are co-partitioned (faust requires it for the table's changelog too).
    """
    p = settings.partitions
    keep = {"retention.ms": "-1", "cleanup.policy": "delete"}
    short = {"retention.ms": str(7 * 24 * 3600 * 1000), "cleanup.policy": "delete"}
    specs = [
        TopicSpec(settings.topic(kind), p, dict(keep))
        for kind in ("watch", "search", "impression", "profile", "upload")
    ]
    specs += [
        TopicSpec(settings.topic("requests"), p, dict(short)),
        TopicSpec(settings.topic("responses"), p, dict(short)),
        TopicSpec(
            settings.topic("deadletter"),
            p,
            {**keep, "max.message.bytes": str(settings.deadletter_max_message_bytes)},
        ),
        TopicSpec(settings.topic("model-updates"), 1, {"cleanup.policy": "compact"}),
        # watches of items newer than the served snapshot, read whole by every worker (the
        # freshness overlay); a week covers any retrain period, older ones are in a snapshot
        TopicSpec(settings.topic(FRESH_WATCHES), p, dict(short)),
    ]
    return specs


def create_topics(settings: Settings, bootstrap: str) -> list[str]:
    """Create missing topics; returns the names created (existing ones are left alone)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **settings.kafka_client_config())
    try:
        existing = set(admin.list_topics())
        missing = [s for s in topic_specs(settings) if s.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was faster
                admin.create_topics(
                    [
                        NewTopic(
                            s.name, s.partitions, settings.replication, topic_configs=s.configs
                        )
                        for s in missing
                    ]
                )
        return [s.name for s in missing]
    finally:
        admin.close()


class ClusterUnreachable(ConnectionError):
    """No broker of the configured cluster answered in time; the message says what to check."""


def check_reachable(settings: Settings, bootstrap: str, timeout_s: float) -> None:
    """Raise :class:`ClusterUnreachable` unless a broker of ``bootstrap`` answers a Kafka
    request within ``timeout_s`` (a command must not hang on a wrong address)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    ms = max(int(timeout_s * 1000), 100)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            bootstrap_timeout_ms=ms,
            **settings.kafka_client_config(),
        )
    except (KafkaError, OSError, ValueError) as exc:
        raise ClusterUnreachable(
            f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s "
            f"({type(exc).__name__}): check --bootstrap / WATCHNEXT_KAFKA_BOOTSTRAP and the "
            "security settings (wait longer: WATCHNEXT_CONNECT_TIMEOUT_S)"
        ) from None
    admin.close()
