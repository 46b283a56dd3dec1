"""A small client for the request/response topics (demo, benchmarks, tests)."""

from __future__ import annotations

import time
from typing import Any

from stream.events import RecommendationRequest, RecommendationResponse
from watchnext.settings import Settings


def send_request(producer: Any, settings: Settings, request: RecommendationRequest) -> Any:
    """Post a request keyed by its user id (co-partitioned with the user's state); returns the
    send future (``.get(timeout)`` raises if the broker did not acknowledge it)."""
    return producer.send(
        settings.topic("requests"), key=str(request.user_id).encode(), value=request.to_json()
    )


class ResponseReader:
    """Reads the response topic from the end (or the start) and finds answers by request id."""

    def __init__(self, settings: Settings, bootstrap: str, from_start: bool = False) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(
            settings.topic("responses"),
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest" if from_start else "latest",
            group_id=None,
            consumer_timeout_ms=200,
            **settings.kafka_client_config(),
        )
        self.seen: dict[str, tuple[float, RecommendationResponse]] = {}
        if not from_start:
            self.consumer.poll(timeout_ms=500)  # join the topic's end before requests go out

    def poll(self) -> None:
        for msg in self.consumer:
            resp = RecommendationResponse.model_validate_json(msg.value)
            self.seen.setdefault(resp.request_id, (time.time(), resp))

    def wait_for(self, request_id: str, timeout_s: float = 60.0) -> RecommendationResponse:
        deadline = time.monotonic() + timeout_s
        while request_id not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no response to {request_id} within {timeout_s:.0f}s")
            self.poll()
        return self.seen[request_id][1]

    def close(self) -> None:
        self.consumer.close()


class ReplyListener:
    """Reads one partition of the response topic from its end: a client instance that sends
    its requests with ``reply_partition`` reads only its own answers (and those of whoever
    shares that partition), not the whole topic."""

    def __init__(self, settings: Settings, bootstrap: str, partition: int | None = None) -> None:
        """``partition`` None: a random one of the topic's (spreads CLI users out)."""
        import random

        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **settings.kafka_client_config(),
        )
        topic = settings.topic("responses")
        if partition is None:
            known = sorted(self.consumer.partitions_for_topic(topic) or ())
            if not known:
                self.consumer.close()
                raise FileNotFoundError(
                    f"topic {topic} does not exist on {bootstrap}: create the topics "
                    "(watchnext topics) and run a worker (watchnext worker)"
                )
            partition = random.choice(known)
        self.partition = partition
        tp = TopicPartition(topic, partition)
        self.consumer.assign([tp])
        self.consumer.seek_to_end(tp)
        self.consumer.position(tp)  # resolved now: a response sent after this is read

    def wait_for(
        self, request_id: str, timeout_s: float = 30.0
    ) -> tuple[RecommendationResponse, list[tuple[str, bytes]]]:
        """The response to ``request_id`` and its headers; TimeoutError past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=200).values():
                for msg in records:
                    if msg.key != request_id.encode():
                        continue
                    resp = RecommendationResponse.model_validate_json(msg.value)
                    return resp, list(msg.headers or [])
        raise TimeoutError(
            f"no response to {request_id} within {timeout_s:.0f}s: is a worker running "
            "for this cluster and topic prefix? (watchnext worker)"
        )

    def close(self) -> None:
        self.consumer.close()


def ask(
    settings: Settings,
    bootstrap: str,
    request: RecommendationRequest,
    timeout_s: float = 30.0,
    headers: list[tuple[str, bytes]] | None = None,
) -> tuple[RecommendationResponse, list[tuple[str, bytes]]]:
    """Send ``request`` (its ``reply_partition`` set to a partition of the response topic
    when unset) and wait for its answer there; returns the response and its headers."""
    from stream.producer import make_producer

    listener = ReplyListener(settings, bootstrap, request.reply_partition)
    request = request.model_copy(update={"reply_partition": listener.partition})
    try:
        producer = make_producer(settings, bootstrap, linger_ms=0)
    except BaseException:
        listener.close()
        raise
    try:
        producer.send(
            settings.topic("requests"),
            key=str(request.user_id).encode(),
            value=request.to_json(),
            headers=headers or [],
        ).get(timeout=timeout_s)
        return listener.wait_for(request.request_id, timeout_s)
    finally:
        producer.close()
        listener.close()
