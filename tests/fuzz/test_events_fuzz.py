"""Fuzz the event contract through the worker's entry points.

User events go through :func:`stream.ingest.process_batch` with an in-memory store, uploads
through :func:`stream.contract.decode_event`, as the agents call them. Payloads are generated
valid and then perhaps mutated (byte flips, truncation, type swaps, huge numbers, deep nesting,
duplicate keys, surrogates, NUL, bidi, millisecond timestamps, missing or wrong keys...).
Invariants: nothing but :class:`InvalidEvent` escapes a decoder and nothing at all escapes
``process_batch``; every item ends as exactly one outcome; every rejection has a short one-line
reason and a dead letter within the size guarantee; an unmutated payload is accepted; accepted
events keep a user's state within its bounds; replaying a batch changes nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import SECONDS_BELOW, EventRules, decode_event
from stream.events import (
    MAX_REASON_CHARS,
    DeadLetter,
    EventKind,
    InvalidEvent,
    RequestContext,
    SearchEvent,
    UploadEvent,
)
from stream.ingest import Consumed, process_batch, reason_class
from stream.state import Limits, Position, UserState, decode, encode
from tests.fuzz import (
    COUNTS,
    FUZZ,
    HOSTILE_TEXT,
    NOW,
    REASONS,
    free_text,
    ids,
    items,
    labels,
    mutated,
    report,
    times,
    users,
)

LIMITS = Limits(history_length=3, search_tokens=4, impression_items=3, dedup_window=2)
WORKER = EventRules(max_future_skew_s=300)
RULES = {
    "worker": WORKER,
    "small": EventRules(max_bytes=512, max_watch_seconds=5000, max_watch_ratio=1.5),
    "offline": EventRules.offline(),
}


@pytest.fixture(scope="module", autouse=True)
def _counts() -> Iterator[None]:
    yield
    report(__name__)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


@st.composite
def watch(draw: st.DrawFn) -> dict[str, Any]:
    duration = draw(optional(st.floats(0.001, 86_400)))
    watched = draw(st.floats(0, 86_400) | st.integers(0, 86_400))
    if duration is not None:
        watched = min(watched, 1.5 * duration)  # within the strictest rules used below
    return _drop_none(
        {
            "event_id": draw(ids),
            "user_id": draw(users),
            "item_id": draw(items),
            "ts": draw(times),
            "watch_seconds": min(watched, 5000),
            "item_duration_seconds": duration,
            "device": draw(optional(labels)),
            "country": draw(optional(labels)),
            "request_id": draw(optional(ids)),
        }
    )


@st.composite
def search(draw: st.DrawFn) -> dict[str, Any]:
    doc = {"event_id": draw(ids), "user_id": draw(users), "query": draw(free_text)}
    return _drop_none({**doc, "ts": draw(times), "device": draw(optional(labels))})


@st.composite
def impression(draw: st.DrawFn) -> dict[str, Any]:
    item_ids = draw(st.lists(items, min_size=1, max_size=6, unique=True))
    positions = draw(st.permutations(range(len(item_ids))))
    shown = [
        _drop_none(
            {
                "item_id": i,
                "position": p,
                "source": draw(optional(labels)),
                "score": draw(optional(st.floats(allow_nan=False, allow_infinity=False))),
            }
        )
        for i, p in zip(item_ids, positions, strict=True)
    ]
    doc = {"event_id": draw(ids), "user_id": draw(users), "ts": draw(times), "items": shown}
    return _drop_none({**doc, "request_id": draw(optional(ids))})


@st.composite
def profile(draw: st.DrawFn) -> dict[str, Any]:
    doc = {"user_id": draw(users), "ts": draw(times), "event_id": draw(optional(ids))}
    doc["age"] = draw(optional(st.integers(0, 130)))
    for name in ("gender", "zip", "region", "occupation"):
        doc[name] = draw(optional(labels))
    return _drop_none(doc)


@st.composite
def upload(draw: st.DrawFn) -> dict[str, Any]:
    doc = {
        "item_id": draw(items),
        "ts": draw(times),
        "duration_seconds": draw(st.floats(0.001, 5000)),
    }
    doc["channel"] = draw(optional(labels))
    doc["title"] = draw(optional(free_text))
    doc["tags"] = draw(optional(st.lists(labels, max_size=4)))
    return _drop_none(doc)


USER_EVENTS = {
    EventKind.WATCH: watch(),
    EventKind.SEARCH: search(),
    EventKind.IMPRESSION: impression(),
    EventKind.PROFILE: profile(),
}


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[Consumed, list[str]]]:
    """A batch as consumed: per (topic, partition) offsets rise, keys as a producer sets them
    (unless mutated)."""
    out: list[tuple[Consumed, list[str]]] = []
    next_offset: dict[tuple[str, int], int] = {}
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(list(USER_EVENTS)))
        doc = draw(USER_EVENTS[kind])
        raw, key, ops = draw(mutated(doc, str(doc["user_id"]).encode()))
        where = (f"t.{kind.value}", doc["user_id"] % 2)
        offset = next_offset.get(where, draw(st.integers(0, 3)))
        next_offset[where] = offset + draw(st.integers(1, 2))
        out.append((Consumed(kind, key, raw, Position(*where, offset)), ops))
    return out


def letter_fits(letter: DeadLetter, value: bytes | None, limit: int) -> None:
    reason = letter.error
    assert reason and len(reason) <= MAX_REASON_CHARS and "\n" not in reason, reason
    body = letter.to_json()
    assert len(body) <= 2 * (4 * limit // 3 + 4) + 2048
    assert DeadLetter.model_validate_json(body) == letter
    assert base64.b64decode(letter.raw_b64) == (value or b"")[:limit]
    assert letter.raw_truncated == (len(value or b"") > limit)


def state_in_bounds(state: UserState, rules: EventRules) -> None:
    assert len(state.history) <= LIMITS.history_length
    assert len(state.search_tokens) <= LIMITS.search_tokens
    assert len(state.impressions) <= LIMITS.impression_items
    kinds = state.recent_event_kinds
    assert len(kinds) <= len(state.recent_event_ids) <= 4 * LIMITS.dedup_window
    assert all(kinds.count(k) <= LIMITS.dedup_window for k in set(kinds))
    for w in state.history:
        assert 0 <= w.watch_seconds <= rules.max_watch_seconds and 0 <= w.ts < SECONDS_BELOW
    assert decode(encode(state)) == state  # what is accepted also survives the table codec


@settings(FUZZ, max_examples=500)
@given(
    batch=batches(),
    rules_name=st.sampled_from(sorted(RULES)),
    limit=st.sampled_from([256, 4096, 65536]),
)
def test_process_batch_never_raises_and_keeps_its_invariants(
    batch: list[tuple[Consumed, list[str]]], rules_name: str, limit: int
) -> None:
    rules = RULES[rules_name]
    consumed = [c for c, _ in batch]
    store: dict[int, bytes] = {}

    def load(user_id: int, _index: int) -> UserState | None:
        raw = store.get(user_id)
        return None if raw is None else decode(raw)

    COUNTS["tried"] += len(consumed)
    try:
        first = process_batch(
            consumed, load, limits=LIMITS, rules=rules, now=NOW, payload_limit=limit
        )
    except Exception:
        COUNTS["crashes"] += 1
        raise
    assert sum(first.outcomes.values()) == len(consumed)
    assert first.outcomes.total() == len(consumed)
    refused = dict(first.dead_letters)
    assert len(refused) == len(first.dead_letters)  # at most one letter per item
    assert sum(n for (_, o), n in first.outcomes.items() if o == "dead_letter") == len(refused)
    COUNTS["rejected"] += len(refused)
    COUNTS["accepted"] += len(consumed) - len(refused)
    for index, letter in refused.items():
        letter_fits(letter, consumed[index].value, limit)
        REASONS[reason_class(letter.error)] += 1
    for index, (item, ops) in enumerate(batch):
        if not ops and rules_name != "small":  # a valid payload as a producer sends it
            assert index not in refused, (refused[index].error, item)
    for state, _ in first.writes.values():
        state_in_bounds(state, rules)
        store[state.user_id] = encode(state)
    again = process_batch(consumed, load, limits=LIMITS, rules=rules, now=NOW, payload_limit=limit)
    assert again.writes == {}  # idempotent: the same states
    assert {i for i, _ in again.dead_letters} == set(refused)
    assert {o for (_, o) in again.outcomes} <= {"duplicate", "dead_letter"}


@settings(FUZZ, max_examples=500)
@given(doc=upload(), data=st.data(), rules_name=st.sampled_from(sorted(RULES)))
def test_upload_decoding_raises_only_invalid_event(
    doc: dict[str, Any], data: st.DataObject, rules_name: str
) -> None:
    rules = RULES[rules_name]
    raw, key, ops = data.draw(mutated(doc, str(doc["item_id"]).encode()))
    COUNTS["tried"] += 1
    try:
        event = decode_event(EventKind.UPLOAD, raw, key, now=NOW, rules=rules)
    except InvalidEvent as exc:
        COUNTS["rejected"] += 1
        reason = str(exc)
        REASONS[reason_class(reason)] += 1
        assert reason and len(reason) <= MAX_REASON_CHARS and "\n" not in reason
        assert ops or rules_name == "small", reason
        return
    except Exception:
        COUNTS["crashes"] += 1
        raise
    COUNTS["accepted"] += 1
    assert isinstance(event, UploadEvent)
    assert 0 < event.duration_seconds <= rules.max_duration_s and event.ts < SECONDS_BELOW
    again = decode_event(
        EventKind.UPLOAD, event.to_json(), str(event.item_id).encode(), now=NOW, rules=rules
    )
    assert again == event  # what a worker accepts it can also write and read back


texts = st.text(
    st.characters(codec=None) | st.sampled_from(list("\ud800\udfff\u202e\u2066\x00\x85")),
    max_size=70,
)


@settings(FUZZ, max_examples=800)
@given(text=texts | st.sampled_from(HOSTILE_TEXT))
def test_one_text_rule_in_both_engines(text: str) -> None:
    """The Rust pattern that validates fields and the Python check that reads request ids and
    explains rejections are the same rule."""
    from stream.contract import request_id_of

    COUNTS["tried"] += 1
    try:
        RequestContext.model_validate({"device": text})
        label_ok = True
    except ValueError:
        label_ok = False
    try:
        SearchEvent.model_validate({"event_id": "e", "user_id": 1, "ts": 1, "query": text})
        free_ok = True
    except ValueError:
        free_ok = False
    COUNTS["accepted" if label_ok else "rejected"] += 1
    forbidden = any(
        ord(c) < 0x20
        or 0x7F <= ord(c) <= 0x9F
        or 0xD800 <= ord(c) <= 0xDFFF
        or c in "\u2028\u2029"
        or c in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
        for c in text
    )
    blank = not text or text.isspace()
    assert free_ok == (not forbidden and len(text) <= 512)
    assert label_ok == (not forbidden and not blank and len(text) <= 64)
    if 1 <= len(text) <= 64:
        rid = request_id_of(json.dumps({"request_id": text}).encode())
        assert (rid == text) == label_ok


_WS = st.sampled_from(["", "", " ", "\n", "\t ", "\r\n  "])
_TRICKY = ["a", "b", "c d", 'q":', '" :', "\\", "é"]


@st.composite
def json_texts(draw: st.DrawFn, depth: int = 0) -> tuple[str, bool]:
    """JSON text with arbitrary whitespace and keys or strings that contain ``":``, and whether
    any object in it repeats a key."""
    kind = draw(st.sampled_from(["scalar", "list", "object"] if depth < 3 else ["scalar"]))
    if kind == "scalar":
        value = draw(st.sampled_from(_TRICKY) | st.integers(-5, 5) | st.none() | st.booleans())
        return json.dumps(value), False
    if kind == "list":
        parts = [draw(json_texts(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
        inner = ",".join(draw(_WS) + t + draw(_WS) for t, _ in parts)
        return "[" + inner + "]", any(d for _, d in parts)
    keys = draw(st.lists(st.sampled_from(_TRICKY), max_size=4))
    parts = [draw(json_texts(depth + 1)) for _ in keys]
    inner = ",".join(
        f"{draw(_WS)}{json.dumps(k)}{draw(_WS)}:{draw(_WS)}{t}{draw(_WS)}"
        for k, (t, _) in zip(keys, parts, strict=True)
    )
    return "{" + inner + "}", len(set(keys)) < len(keys) or any(d for _, d in parts)


@settings(FUZZ, max_examples=600)
@given(text=json_texts())
def test_duplicate_keys_are_found_whatever_the_layout(text: tuple[str, bool]) -> None:
    """The fast duplicate check (a key count) agrees with an exact parse, for any whitespace and
    any ``":`` inside keys and strings."""
    body, has_duplicate = text
    raw = ('{"user_id": 1, "ts": 1, "x":' + body + "}").encode()
    COUNTS["tried"] += 1
    try:
        decode_event(EventKind.PROFILE, raw, b"1", now=NOW, rules=WORKER)
    except InvalidEvent as exc:
        COUNTS["rejected"] += 1
        REASONS[reason_class(str(exc))] += 1
        assert has_duplicate and str(exc).startswith("duplicate JSON key"), (str(exc), raw)
        return
    COUNTS["accepted"] += 1
    assert not has_duplicate, raw
