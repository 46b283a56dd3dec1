"""Requests answered in micro-batches: one outcome per request, in order; invalid requests
answered alone; a batch the model cannot answer is answered request by request."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from stream.contract import EventRules
from stream.events import RecommendationResponse, RecommendedItem
from stream.request_handler import RequestHandler
from stream.state import Position, UserState

NOW = 1.7e9


class _Serving:
    def __init__(self, fail_batch: bool = False, poison: int | None = None) -> None:
        self.fail_batch = fail_batch
        self.poison = poison
        self.batches: list[int] = []
        self.single = 0

    def _one(self, request: Any) -> RecommendationResponse:
        if request.user_id == self.poison:
            raise RuntimeError("this user breaks the model")
        return RecommendationResponse(
            request_id=request.request_id,
            user_id=request.user_id,
            items=[RecommendedItem(item_id=request.user_id * 10 + i, score=1.0) for i in range(2)],
        )

    def answer_many(self, states: list[Any], requests: list[Any], now: float) -> list[Any]:
        self.batches.append(len(requests))
        if self.fail_batch or self.poison is not None:
            raise RuntimeError("batch failed")
        return [self._one(r) for r in requests]

    def answer(self, state: Any, request: Any, now: float) -> RecommendationResponse:
        self.single += 1
        return self._one(request)


def _request(uid: int, rid: str) -> tuple[bytes, bytes]:
    return str(uid).encode(), json.dumps({"request_id": rid, "user_id": uid, "k": 2}).encode()


def _run(serving: _Serving) -> tuple[list[Any], list[tuple[str, bytes | None, bytes]], list[int]]:
    sent: list[tuple[str, bytes | None, bytes]] = []
    loaded: list[int] = []

    def load(uid: int) -> UserState:
        loaded.append(uid)
        return UserState(user_id=uid)

    handler = RequestHandler(
        serving, load, lambda k, key, v, **_: sent.append((k, key, v)) or object(), EventRules(),
        "w", 1024,
    )  # fmt: skip
    items = [
        (*_request(1, "a"), Position("t.requests", 0, 10)),
        (b"2", b"{not json", Position("t.requests", 0, 11)),
        (*_request(3, "c"), Position("t.requests", 0, 12)),
        (*_request(4, "d"), Position("t.requests", 0, 13)),
    ]
    outcomes = handler.handle_many([(k, v, p) for k, v, p in items], NOW)
    return outcomes, sent, loaded


def _responses(sent: list[tuple[str, bytes | None, bytes]]) -> dict[str, Any]:
    out = {}
    for kind, _, value in sent:
        if kind == "responses":
            r = RecommendationResponse.model_validate_json(value)
            assert r.request_id not in out  # exactly one response per request
            out[r.request_id] = r
    return out


def test_one_outcome_per_request_in_order_and_valid_ones_answered_together() -> None:
    serving = _Serving()
    outcomes, sent, loaded = _run(serving)
    assert [o.request_id for o in outcomes] == ["a", "invalid-0-11", "c", "d"]
    assert [o.label for o in outcomes] == ["ok", "invalid", "ok", "ok"]
    assert serving.batches == [3] and serving.single == 0 and loaded == [1, 3, 4]
    responses = _responses(sent)
    assert [it.item_id for it in responses["c"].items] == [30, 31]
    assert responses["invalid-0-11"].error.startswith("invalid request")
    kinds = Counter(kind for kind, _, _ in sent)
    assert kinds == {"responses": 4, "impression": 3, "deadletter": 1}
    assert sum(len(o.futures) for o in outcomes) == len(sent)


def test_a_failed_batch_is_answered_request_by_request() -> None:
    serving = _Serving(fail_batch=True)
    outcomes, sent, _ = _run(serving)
    assert [o.label for o in outcomes] == ["ok", "invalid", "ok", "ok"]
    assert serving.batches == [3] and serving.single == 3
    assert len(_responses(sent)) == 4


def test_a_request_that_breaks_the_model_fails_alone() -> None:
    serving = _Serving(poison=3)
    outcomes, sent, _ = _run(serving)
    assert [o.label for o in outcomes] == ["ok", "invalid", "error", "ok"]
    responses = _responses(sent)
    assert responses["c"].error == "internal error: RuntimeError"
    assert responses["a"].items and responses["d"].items


def test_the_impression_is_applied_by_the_handler_and_published_marked() -> None:
    from stream.request_handler import APPLIED_HEADER

    applied: list[tuple[Any, Position]] = []
    sent: list[tuple[str, bytes | None, bytes, Any]] = []

    def apply_impression(shown: Any, position: Position) -> list[Any]:
        applied.append((shown, position))
        return ["changelog-future"]

    def send(kind: str, key: bytes | None, value: bytes, headers: Any = None, **_: Any) -> object:
        sent.append((kind, key, value, headers))
        return object()

    handler = RequestHandler(
        _Serving(), lambda uid: None, send, EventRules(), "w", 1024, apply_impression
    )
    (outcome,) = handler.handle_many([(*_request(5, "e"), Position("t.requests", 1, 7))], NOW)
    ((shown, position),) = applied
    assert shown.event_id == "imp-e" and [s.item_id for s in shown.items] == [50, 51]
    assert position == Position("t.requests", 1, 7)  # deduplicated by the request's offset
    (impression,) = [s for s in sent if s[0] == "impression"]
    assert impression[3] == [APPLIED_HEADER]
    assert "changelog-future" in outcome.futures and len(outcome.futures) == 3
