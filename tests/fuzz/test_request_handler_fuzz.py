"""Fuzz the worker's request handler (stream/request_handler.py) as the agent calls it.

Generated and mutated request bytes and keys, stored states that are valid, garbage or absent,
and a serving layer that answers, errs or raises: the handler never raises, and every request
gets exactly one response (parseable, with a valid request id), plus a dead letter exactly
when it was invalid, plus at most one impression whose event id fits the id limit.
"""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from stream.contract import EventRules, request_id_of
from stream.events import DeadLetter, ImpressionEvent, RecommendationResponse, RecommendedItem
from stream.request_handler import RequestHandler
from stream.state import Position, UserState, encode

NOW = 1_800_000_000.0
COUNTS: Counter[str] = Counter()


class FakeServing:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def answer(self, state, request, now) -> RecommendationResponse:
        if self.mode == "raise":
            raise RuntimeError("model exploded")
        if self.mode == "error":
            return RecommendationResponse(
                request_id=request.request_id, user_id=request.user_id, error="no snapshot"
            )
        return RecommendationResponse(
            request_id=request.request_id,
            user_id=request.user_id,
            items=[RecommendedItem(item_id=i, score=1.0 / (i + 1)) for i in range(request.k)],
        )


ids = st.one_of(
    st.text(min_size=0, max_size=140),
    st.sampled_from(["r" * 125, "r" * 126, "r" * 128, "r" * 129, "\ud800", "a\x00b", " ", "ok"]),
    st.integers(),
    st.none(),
)
user_ids = st.one_of(st.integers(min_value=-5, max_value=2**64), st.text(max_size=5), st.none())
valid_bodies = st.fixed_dictionaries(
    {
        "request_id": st.text(
            st.characters(codec="ascii", categories=("L", "N", "P")), min_size=1, max_size=128
        ),
        "user_id": st.integers(0, 10**6),
        "k": st.integers(1, 50),
    }
)
any_bodies = st.fixed_dictionaries(
    {"request_id": ids, "user_id": user_ids},
    optional={
        "k": st.one_of(st.integers(-3, 600), st.floats(allow_nan=True), st.text(max_size=3)),
        "context": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "ts": st.one_of(st.floats(), st.integers(0, 10**15)),
                    "device": st.text(max_size=80),
                },
            ),
            st.integers(),
        ),
        "schema_version": st.integers(0, 3),
    },
)
bodies = st.one_of(valid_bodies, any_bodies)


def _encode(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    how = data.draw(
        st.sampled_from(["none", "none", "none", "flip", "truncate", "nest", "dupkey", "garbage"])
    )
    if how == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    if how == "truncate":
        return raw[: data.draw(st.integers(0, len(raw)))]
    if how == "nest":
        depth = data.draw(st.sampled_from([10, 1000, 100_000]))
        return b'{"request_id":' * depth + b"1" + b"}" * depth
    if how == "dupkey":
        return raw.rstrip(b"}") + b', "request_id": "again"}'
    if how == "garbage":
        return data.draw(st.binary(max_size=200))
    return raw


@seed(13)
@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    body=bodies,
    data=st.data(),
    mode=st.sampled_from(["ok", "error", "raise"]),
    stored=st.sampled_from(["none", "valid", "garbage"]),
)
def test_every_request_gets_exactly_one_response(body, data, mode, stored) -> None:
    raw = _mutate(_encode(body), data)
    key = data.draw(
        st.one_of(
            st.none(),
            st.just(str(body.get("user_id")).encode("utf-8", "surrogatepass")),
            st.just(str(body.get("user_id")).encode("utf-8", "surrogatepass")),
            st.binary(max_size=20),
        )
    )
    sent: list[tuple[str, bytes | None, bytes]] = []

    def load_state(user_id: int) -> bytes | None:
        if stored == "valid":
            return encode(UserState(user_id=user_id))
        return b"\xff{not a state" if stored == "garbage" else None

    def send(kind: str, k: bytes | None, v: bytes, **_: object) -> object:
        sent.append((kind, k, v))
        return object()

    handler = RequestHandler(
        FakeServing(mode), load_state, send, EventRules(), "fuzz", payload_limit=1024
    )
    outcome = handler.handle(key, raw, Position("t.requests", 2, 99), NOW)
    COUNTS["tried"] += 1
    COUNTS[outcome.label] += 1
    kinds = Counter(kind for kind, _, _ in sent)
    assert kinds["responses"] == 1
    assert len(outcome.futures) == len(sent)
    (response_bytes,) = [v for kind, _, v in sent if kind == "responses"]
    response = RecommendationResponse.model_validate_json(response_bytes)
    assert response.request_id == outcome.request_id
    assert request_id_of(_encode({"request_id": response.request_id})) == response.request_id
    if outcome.label == "invalid":
        assert kinds["deadletter"] == 1 and kinds["impression"] == 0
        (letter_bytes,) = [v for kind, _, v in sent if kind == "deadletter"]
        letter = DeadLetter.model_validate_json(letter_bytes)
        assert letter.error.startswith("invalid request") and len(letter.error) <= 400
        assert len(letter_bytes) < 8 * 1024
        assert response.error and response.error.startswith("invalid request")
    else:
        assert kinds["deadletter"] == 0
        assert kinds["impression"] == (1 if mode == "ok" else 0)
        for kind, _, v in sent:
            if kind == "impression":
                assert len(ImpressionEvent.model_validate_json(v).event_id) <= 128
        assert (response.error is None) == (mode == "ok")


def teardown_module() -> None:
    print(f"\nrequest handler fuzz: {dict(COUNTS)} crashes=0")
    # the generator must reach every path, or the invariants above were never exercised
    assert COUNTS["ok"] > 0 and COUNTS["error"] > 0 and COUNTS["invalid"] > 0, COUNTS
