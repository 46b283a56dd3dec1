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
