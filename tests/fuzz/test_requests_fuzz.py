"""Fuzz the request contract: :func:`decode_request` and :func:`request_id_of`, as the request
handler calls them on every consumed request.

Invariants: ``decode_request`` raises nothing but :class:`InvalidEvent`, with a short one-line
reason, and accepts every unmutated request; ``request_id_of`` never raises and gives None or a
valid ``EventId``, and for an accepted request (of at most 64 KiB) exactly its ``request_id``;
``synthetic_request_id`` is always a valid ``EventId``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import (
    SECONDS_BELOW,
    EventRules,
    decode_request,
    request_id_of,
    synthetic_request_id,
)
from stream.events import MAX_REASON_CHARS, InvalidEvent, RecommendationRequest
from stream.ingest import reason_class
from tests.fuzz import COUNTS, FUZZ, NOW, REASONS, ids, labels, mutated, report, times, users

RULES = {"worker": EventRules(), "offline": EventRules.offline()}


@pytest.fixture(scope="module", autouse=True)
def _counts() -> Iterator[None]:
    yield
    report(__name__)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "request_id": draw(ids),
        "user_id": draw(users | st.integers(0, 2**63 - 1)),
    }
    if draw(st.booleans()):
        doc["k"] = draw(st.integers(1, 500))
    if draw(st.booleans()):
        doc["sent_ts"] = draw(times)
    context = {}
    for name, strategy in (("device", labels), ("country", labels), ("ts", times)):
        if draw(st.booleans()):
            context[name] = draw(strategy)
    if context or draw(st.booleans()):
        doc["context"] = context
    return doc


def valid_id(rid: str) -> bool:
    try:
        RecommendationRequest(request_id=rid, user_id=0)
    except ValueError:
        return False
    return True


@settings(FUZZ, max_examples=800)
@given(doc=requests(), data=st.data(), rules_name=st.sampled_from(sorted(RULES)))
def test_request_decoding_and_its_id(
    doc: dict[str, Any], data: st.DataObject, rules_name: str
) -> None:
    raw, key, ops = data.draw(mutated(doc, str(doc["user_id"]).encode()))
    COUNTS["tried"] += 1
    try:
        rid = request_id_of(raw)
    except BaseException:
        COUNTS["crashes"] += 1
        raise
    assert rid is None or (isinstance(rid, str) and len(rid) <= 128 and valid_id(rid))
    try:
        request = decode_request(raw, key, now=NOW, rules=RULES[rules_name])
    except InvalidEvent as exc:
        COUNTS["rejected"] += 1
        reason = str(exc)
        REASONS[reason_class(reason)] += 1
        assert reason and len(reason) <= MAX_REASON_CHARS and "\n" not in reason
        assert ops, reason  # an unmutated request is accepted
        return
    except Exception:
        COUNTS["crashes"] += 1
        raise
    COUNTS["accepted"] += 1
    assert raw is not None
    if len(raw) <= 64 * 1024:
        assert rid == request.request_id
    for ts in (request.sent_ts, request.context.ts):
        assert ts is None or 0 <= ts < SECONDS_BELOW
    assert (
        decode_request(
            request.to_json(), str(request.user_id).encode(), now=NOW, rules=RULES[rules_name]
        )
        == request
    )


@settings(FUZZ, max_examples=300)
@given(
    raw=st.binary(max_size=300)
    | st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_request_id_of_arbitrary_bytes(raw: bytes) -> None:
    COUNTS["tried"] += 1
    rid = request_id_of(raw)
    COUNTS["rejected" if rid is None else "accepted"] += 1
    assert rid is None or valid_id(rid)


@settings(FUZZ, max_examples=200)
@given(
    topic=st.text(max_size=300),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
)
def test_synthetic_request_ids_are_valid(topic: str, partition: int, offset: int) -> None:
    rid = synthetic_request_id(topic, partition, offset)
    assert valid_id(rid) and request_id_of(json.dumps({"request_id": rid}).encode()) == rid
