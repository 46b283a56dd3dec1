"""Request controls of the handler: deadlines, the reply partition and headers carried back."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from stream.contract import EventRules
from stream.events import RecommendationResponse, RecommendedItem
from stream.request_handler import (
    APPLIED_HEADER,
    CONTENT_TYPE,
    ECHO_HEADER_BYTES,
    ECHO_HEADERS_MAX,
    RequestHandler,
    RequestRecord,
    echo_headers,
)
from stream.state import Position


class _Serving:
    def answer_many(self, states: list[Any], requests: list[Any], now: float) -> list[Any]:
        return [self.answer(None, r, now) for r in requests]

    def answer(self, state: Any, request: Any, now: float) -> RecommendationResponse:
        return RecommendationResponse(
            request_id=request.request_id,
            user_id=request.user_id,
            items=[RecommendedItem(item_id=i, score=1.0) for i in (3, 4)],
        )


class _Sent(list[dict[str, Any]]):
    def __call__(self, kind: str, key: bytes | None, value: bytes, **kw: Any) -> object:
        self.append({"kind": kind, "key": key, "value": value, **kw})
        return object()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [s for s in self if s["kind"] == kind]


def _handle(doc: dict[str, Any], timestamp: float | None = None, headers: Any = ()) -> _Sent:
    sent = _Sent()
    handler = RequestHandler(
        _Serving(), lambda uid: None, sent, EventRules(), "w", 1024, response_partitions=4
    )
    record = RequestRecord(
        str(doc.get("user_id", 1)).encode(),
        json.dumps(doc).encode(),
        Position("t.requests", 0, 5),
        timestamp,
        list(headers),
    )
    handler.handle_many([record], time.time())
    return sent


def _response(sent: _Sent) -> RecommendationResponse:
    (out,) = sent.of("responses")
    return RecommendationResponse.model_validate_json(out["value"])


def test_an_answer_past_its_deadline_is_sent_marked_expired_and_records_nothing() -> None:
    late = _handle(
        {"request_id": "r", "user_id": 1, "sent_ts": time.time() - 5, "deadline_ms": 100}
    )
    resp = _response(late)
    assert resp.expired is True and [it.item_id for it in resp.items] == [3, 4]
    assert not late.of("impression")
    in_time = _handle(
        {"request_id": "r", "user_id": 1, "sent_ts": time.time(), "deadline_ms": 60_000}
    )
    assert _response(in_time).expired is False and len(in_time.of("impression")) == 1
    plain = _handle({"request_id": "r", "user_id": 1})
    assert _response(plain).expired is None and len(plain.of("impression")) == 1


def test_without_sent_ts_the_deadline_counts_from_the_record_timestamp() -> None:
    doc = {"request_id": "r", "user_id": 1, "deadline_ms": 1000}
    assert _response(_handle(doc, timestamp=time.time() - 2)).expired is True
    assert _response(_handle(doc, timestamp=time.time())).expired is False


def test_the_answer_goes_to_the_reply_partition() -> None:
    sent = _handle({"request_id": "r", "user_id": 1, "reply_partition": 3})
    (out,) = sent.of("responses")
    assert out["partition"] == 3 and out["key"] == b"r"
    assert "partition" not in _handle({"request_id": "r", "user_id": 1}).of("responses")[0]


def test_a_reply_partition_the_topic_lacks_is_an_error_answered_on_the_key_partition() -> None:
    sent = _handle({"request_id": "r", "user_id": 1, "reply_partition": 4})
    resp = _response(sent)
    assert resp.error is not None and "reply_partition: 4 is not a partition" in resp.error
    assert "partition" not in sent.of("responses")[0] and len(sent.of("deadletter")) == 1


def test_an_invalid_request_is_answered_where_its_client_listens() -> None:
    sent = _handle({"request_id": "r", "user_id": 1, "k": 0, "reply_partition": 2})
    assert _response(sent).error is not None
    assert sent.of("responses")[0]["partition"] == 2


def test_the_request_headers_come_back_with_a_content_type() -> None:
    trace = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    headers = [
        trace,
        ("x-client", b"web-7"),
        APPLIED_HEADER,
        ("watchnext-forwarded-from", b"t/1/2"),
    ]
    (out,) = _handle({"request_id": "r", "user_id": 1}, headers=headers).of("responses")
    assert out["headers"] == [trace, ("x-client", b"web-7"), CONTENT_TYPE]
    # an invalid request's error response carries them too
    (bad,) = _handle({"request_id": "r", "user_id": 1, "k": 0}, headers=[trace]).of("responses")
    assert bad["headers"] == [trace, CONTENT_TYPE]


@pytest.mark.parametrize("n", [0, ECHO_HEADERS_MAX, ECHO_HEADERS_MAX + 50])
def test_echoed_headers_are_bounded(n: int) -> None:
    many = [(f"h{i}", b"v") for i in range(n)] + [("big", b"x" * ECHO_HEADER_BYTES)]
    out = echo_headers(many)
    assert out[-1] == CONTENT_TYPE and len(out) == min(n, ECHO_HEADERS_MAX) + 1
    assert all(len(k) + len(v) <= ECHO_HEADER_BYTES for k, v in out)
