"""Validation of the wire contracts: what is accepted, and the reason for what is not."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from stream.contract import (
    EventRules,
    decode_event,
    decode_request,
    request_id_of,
    synthetic_request_id,
)
from stream.events import (
    MAX_REASON_CHARS,
    EventKind,
    ImpressionEvent,
    InvalidEvent,
    RecommendationRequest,
    UploadEvent,
    WatchEvent,
    clip_reason,
)
from stream.ingest import reason_class
from watchnext.settings import Settings

NOW = 1.7e9
RULES = EventRules(max_bytes=4096, max_future_skew_s=300)
GOOD: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "e1",
    "user_id": 5,
    "item_id": 7,
    "ts": 1.6e9,
    "watch_seconds": 30,
    "device": "web",
}
IMPRESSION: dict[str, Any] = {
    "event_id": "i1",
    "user_id": 5,
    "ts": 1.6e9,
    "items": [{"item_id": 1, "position": 0}, {"item_id": 2, "position": 1}],
}
UPLOAD: dict[str, Any] = {"item_id": 9, "ts": 1.6e9, "duration_seconds": 60, "tags": ["a"]}
REQUEST: dict[str, Any] = {"request_id": "r1", "user_id": 5, "k": 3, "sent_ts": 1.6e9}


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def decode(
    value: bytes | None,
    key: bytes | None = b"5",
    kind: EventKind = EventKind.WATCH,
    rules: EventRules = RULES,
) -> Any:
    return decode_event(kind, value, key, now=NOW, rules=rules)


def refused(value: bytes | None, key: bytes | None = b"5", **kw: Any) -> str:
    """The reason ``value`` is refused with; also checks the reason's own contract."""
    with pytest.raises(InvalidEvent) as info:
        decode(value, key, **kw)
    reason = str(info.value)
    assert reason and "\n" not in reason and len(reason) <= MAX_REASON_CHARS
    return reason


def test_valid_watch_round_trips() -> None:
    ev = decode(enc(GOOD))
    assert isinstance(ev, WatchEvent) and ev.watch_seconds == 30.0
    assert decode(ev.to_json()) == ev


@pytest.mark.parametrize(
    ("value", "reason", "label"),
    [
        (b"{not json", "malformed JSON", "malformed_json"),
        (b"\xff\xfe{}", "malformed JSON: not UTF-8", "malformed_json"),
        (enc({**GOOD, "schema_version": 2}), "unsupported schema_version 2", "schema_version"),
        (
            enc({**GOOD, "user_id": "5"}),
            "user_id: Input should be a valid integer",
            "invalid_fields",
        ),
        (enc({**GOOD, "watch_seconds": -1}), "watch_seconds", "invalid_fields"),
        (enc({**GOOD, "ts": NOW + 10_000}), "in the future", "future_timestamp"),
        (
            enc({k: v for k, v in GOOD.items() if k != "item_id"}),
            "item_id: Field required",
            "invalid_fields",
        ),
        (enc({**GOOD, "pad": "x" * 5000}), "exceeds the 4096-byte limit", "oversize"),
        (b"[1, 2]", "Input should be an object", "invalid_fields"),
        (b'"text"', "Input should be an object, not a string", "invalid_fields"),
        (None, "tombstone", "empty"),
        (
            b'{"event_id": "a", "event_id": "b"}',
            "duplicate JSON key 'event_id'",
            "duplicate_json_key",
        ),
        (enc({**GOOD, "watch_seconds": 90_000}), "bounds: watch_seconds", "bounds"),
        (enc({**GOOD, "ts": 1794315522350}), "seconds expected", "ms_timestamp"),
    ],
)
def test_invalid_watch_is_refused_with_its_reason(
    value: bytes | None, reason: str, label: str
) -> None:
    got = refused(value)
    assert reason in got
    assert reason_class(got) == label


# --- keys ---------------------------------------------------------------------------------


def test_key_must_match_the_user_id() -> None:
    reason = refused(enc(GOOD), key=b"6")
    assert reason == "message key b'6' does not match id 5: key must be the decimal user_id"
    assert reason_class(reason) == "key_mismatch"
    assert "does not match id 5" in refused(enc(GOOD), key=b"05")  # decimal means canonical


def test_a_missing_key_is_refused_and_the_reason_says_what_to_send() -> None:
    reason = refused(enc(GOOD), key=None)
    assert reason == "message key missing: send the decimal user_id (e.g. b'5') as the Kafka key"
    assert reason_class(reason) == "key_missing"


def test_offline_readers_need_no_key_but_a_wrong_key_is_still_wrong() -> None:
    assert decode(enc(GOOD), key=None, rules=EventRules.offline()).user_id == 5
    refused(enc(GOOD), key=b"6", rules=EventRules.offline())


def test_uploads_are_keyed_by_item() -> None:
    up = UploadEvent(item_id=9, ts=1.0, duration_seconds=60, tags=["a"])
    assert decode(up.to_json(), key=b"9", kind=EventKind.UPLOAD) == up
    reason = refused(up.to_json(), key=None, kind=EventKind.UPLOAD)
    assert "send the decimal item_id (e.g. b'9')" in reason
    assert "key must be the decimal item_id" in refused(
        up.to_json(), key=b"5", kind=EventKind.UPLOAD
    )


# --- JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b'{"a": 1, "a": 1}',
        enc({**IMPRESSION, "items": [{"item_id": 1, "position": 0}]}).replace(
            b'"position": 0', b'"position": 0, "position": 1'
        ),
        enc({**GOOD, "extra": [{"deep": {"x": 1}}]}).replace(b'"x": 1', b'"x": 1, "x": 2'),
    ],
)
def test_duplicate_keys_are_refused_at_any_depth(value: bytes) -> None:
    kind = EventKind.IMPRESSION if b"items" in value else EventKind.WATCH
    assert refused(value, kind=kind).startswith("duplicate JSON key")


def test_duplicate_keys_are_found_in_any_layout() -> None:
    spaced = b'{"user_id" : 5 , "ts"\n:\t1, "user_id"\r\n: 5}'
    assert refused(spaced, kind=EventKind.PROFILE) == "duplicate JSON key 'user_id'"
    in_arrays = b'{"user_id":5,"ts":1,"x":[{"a":1},[{"b":1,"b":2}]]}'
    assert refused(in_arrays, kind=EventKind.PROFILE) == "duplicate JSON key 'b'"
    # ``":`` inside keys and strings is no duplicate (the exact parser settles it)
    tricky = {"user_id": 5, "ts": 1, 'q":': '" : ":', "gender": 'a":b'}
    assert decode(enc(tricky), kind=EventKind.PROFILE).gender == 'a":b'
    same_key_in_two_objects = b'{"user_id":5,"ts":1,"x":{"a":1},"y":{"a":1}}'
    assert decode(same_key_in_two_objects, kind=EventKind.PROFILE).user_id == 5


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_literals_are_refused(literal: bytes) -> None:
    value = enc(GOOD).replace(b'"watch_seconds": 30', b'"watch_seconds": ' + literal)
    assert refused(value).startswith("malformed JSON")
    assert "NaN and Infinity are not JSON" in refused(value.replace(b" ", b""))
    extra = enc(GOOD)[:-1] + b', "x": ' + literal + b"}"  # even in a field that is ignored
    assert refused(extra).startswith("malformed JSON")


def test_overflowing_numbers_are_not_finite() -> None:
    assert "finite" in refused(enc(GOOD).replace(b'"watch_seconds": 30', b'"watch_seconds": 1e400'))
    impression = enc({**IMPRESSION, "items": [{"item_id": 1, "position": 0, "score": 1}]})
    impression = impression.replace(b'"score": 1', b'"score": -1e999')
    assert "items.0.score" in refused(impression, kind=EventKind.IMPRESSION)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep = b'{"event_id": "e", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reason = refused(deep, rules=EventRules.offline())  # no size limit in front of the parser
    assert reason.startswith("malformed JSON: nested too deeply")
    assert "exceeds" in refused(deep)  # a worker never parses it at all


def test_huge_integers_are_refused() -> None:
    assert "user_id" in refused(enc({**GOOD, "user_id": 10**30}))
    assert refused(
        enc(GOOD).replace(b'"user_id": 5', b'"user_id": ' + b"9" * 5000), rules=EventRules.offline()
    ).startswith("malformed JSON")


# --- strictness: what JSON value fits which field -----------------------------------------


def test_json_integers_are_fine_for_float_fields() -> None:
    ev = decode(enc({**GOOD, "ts": 1_600_000_000, "watch_seconds": 30}))
    assert ev.ts == 1.6e9 and isinstance(ev.ts, float) and isinstance(ev.watch_seconds, float)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_id", "5"),  # no string-to-int coercion
        ("user_id", True),  # a bool is no int
        ("user_id", 5.0),  # nor is a float, even a whole one
        ("watch_seconds", True),
        ("watch_seconds", "30"),
        ("ts", "1600000000"),
        ("event_id", 1),  # no int-to-string coercion
        ("device", ["web"]),
    ],
)
def test_no_coercion_between_json_types(field: str, value: Any) -> None:
    assert refused(enc({**GOOD, field: value})).startswith(f"{field}: Input should be")


@pytest.mark.parametrize("version", [True, 1.0, "1", None, [1]])
def test_schema_version_is_exactly_the_integer_1(version: Any) -> None:
    reason = refused(enc({**GOOD, "schema_version": version}))
    assert reason.startswith("unsupported schema_version")


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    ev = decode(enc({**GOOD, "new_field": 1}))
    assert isinstance(ev, WatchEvent)


# --- text rule ----------------------------------------------------------------------------

BAD_TEXT = {
    "NUL": "a\x00b",
    "escape": "\x1b[31mred",
    "newline": "two\nlines",
    "DEL": "a\x7f",
    "C1": "a\x85",
    "RLO override": "abc\u202edef",
    "LRE embedding": "\u202aabc",
    "isolate": "\u2066abc\u2069",
    "RLM mark": "abc\u200f",
    "LRM mark": "\u200eabc",
    "line separator": "a\u2028b",
    "blank": "   ",
    "empty": "",
}


@pytest.mark.parametrize("text", BAD_TEXT.values(), ids=BAD_TEXT.keys())
@pytest.mark.parametrize(
    ("kind", "base", "field", "wrap"),
    [
        (EventKind.WATCH, GOOD, "event_id", False),
        (EventKind.WATCH, GOOD, "request_id", False),
        (EventKind.WATCH, GOOD, "device", False),
        (EventKind.WATCH, GOOD, "country", False),
        (
            EventKind.SEARCH,
            {"event_id": "s", "user_id": 5, "ts": 1.0, "query": "q"},
            "query",
            False,
        ),
        (EventKind.PROFILE, {"user_id": 5, "ts": 1.0}, "gender", False),
        (EventKind.PROFILE, {"user_id": 5, "ts": 1.0}, "zip", False),
        (EventKind.PROFILE, {"user_id": 5, "ts": 1.0}, "region", False),
        (EventKind.PROFILE, {"user_id": 5, "ts": 1.0}, "occupation", False),
        (EventKind.UPLOAD, UPLOAD, "channel", False),
        (EventKind.UPLOAD, UPLOAD, "title", False),
        (EventKind.UPLOAD, UPLOAD, "tags", True),
    ],
)
def test_ids_and_texts_are_printable_and_not_blank(
    text: str, kind: EventKind, base: dict[str, Any], field: str, wrap: bool
) -> None:
    key = b"9" if kind is EventKind.UPLOAD else b"5"
    value = enc({**base, field: [text] if wrap else text})
    if field in ("query", "title") and not text.strip():  # free text may be blank
        assert getattr(decode(value, key=key, kind=kind), field) == text
        return
    reason = refused(value, key=key, kind=kind)
    assert reason.startswith(field)
    assert "not allowed" in reason or "blank" in reason or "at least 1 character" in reason


def test_shown_item_source_follows_the_text_rule() -> None:
    doc = {**IMPRESSION, "items": [{"item_id": 1, "position": 0, "source": "a\u202eb"}]}
    assert "items.0.source: character U+202E" in refused(enc(doc), kind=EventKind.IMPRESSION)


def test_a_lone_surrogate_is_refused() -> None:
    value = enc(GOOD).replace(b'"e1"', b'"\\ud800"')
    reason = refused(value)
    assert reason.startswith("malformed JSON") and "lone surrogate" in reason
    raw_bytes = json.dumps({**GOOD, "event_id": "\ud800"}, ensure_ascii=False)
    assert "not UTF-8" in refused(raw_bytes.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("text", ["Café crème", "東京", "family 👨\u200d👩\u200d👧", "a b"])
def test_ordinary_unicode_is_fine(text: str) -> None:
    ev = decode(enc({**GOOD, "device": text[:64]}))
    assert ev.device == text[:64] and decode(ev.to_json()) == ev


# --- values that depend on the rules ------------------------------------------------------


def test_watch_bounds() -> None:
    rules = replace(RULES, max_watch_seconds=1000, max_watch_ratio=2, max_duration_s=600)
    ok = {**GOOD, "watch_seconds": 1000, "item_duration_seconds": 500}
    assert decode(enc(ok), rules=rules).watch_seconds == 1000  # limits are inclusive
    over = [
        ({**GOOD, "watch_seconds": 1000.5}, "watch_seconds 1000.5 is over the 1000 s limit"),
        ({**ok, "item_duration_seconds": 499}, "is over 2 x item_duration_seconds 499"),
        ({**ok, "item_duration_seconds": 601}, "item_duration_seconds 601 is over the 600 s"),
    ]
    for doc, reason in over:
        got = refused(enc(doc), rules=rules)
        assert got.startswith("bounds: ") and reason in got and reason_class(got) == "bounds"


def test_upload_duration_bound() -> None:
    rules = replace(RULES, max_duration_s=3600)
    assert decode(enc({**UPLOAD, "duration_seconds": 3600}), b"9", EventKind.UPLOAD, rules)
    got = refused(
        enc({**UPLOAD, "duration_seconds": 3601}), b"9", kind=EventKind.UPLOAD, rules=rules
    )
    assert got.startswith("bounds: duration_seconds 3601")


def test_bounds_apply_offline_too_so_recomputation_agrees_with_the_worker() -> None:
    assert refused(enc({**GOOD, "watch_seconds": 1e308}), rules=EventRules.offline())


def test_impression_items_and_positions_are_unique() -> None:
    assert isinstance(decode(enc(IMPRESSION), kind=EventKind.IMPRESSION), ImpressionEvent)
    same_item = {
        **IMPRESSION,
        "items": [{"item_id": 1, "position": 0}, {"item_id": 1, "position": 1}],
    }
    same_slot = {
        **IMPRESSION,
        "items": [{"item_id": 1, "position": 0}, {"item_id": 2, "position": 0}],
    }
    assert refused(enc(same_item), kind=EventKind.IMPRESSION) == (
        "items.1.item_id: 1 appears twice (item_ids must be unique)"
    )
    assert "items.1.position: 0 appears twice" in refused(enc(same_slot), kind=EventKind.IMPRESSION)
    # on the wire only: the state transition counts whatever it is given (tests build such)
    assert len(ImpressionEvent.model_validate(same_item).items) == 2


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "unit"),
    [
        (1794315522350, "milliseconds"),
        (1.6e11, "milliseconds"),
        (1.7e15, "microseconds"),
        (1.7e18, "nanoseconds"),
        (1e308, "is no Unix time in seconds"),
    ],
)
def test_timestamps_in_a_finer_unit_say_seconds_are_expected(ts: float, unit: str) -> None:
    for rules in (RULES, EventRules.offline()):
        reason = refused(enc({**GOOD, "ts": ts}), rules=rules)
        assert unit in reason and "seconds expected" in reason
        assert reason_class(reason) == "ms_timestamp"
    assert refused(enc({**GOOD, "ts": 1794315522350})) == (
        "ts 1794315522350 looks like milliseconds: seconds expected "
        "(Unix epoch seconds, fractions allowed)"
    )


def test_future_check_uses_the_skew_and_can_be_off() -> None:
    assert decode(enc({**GOOD, "ts": NOW + 300})).ts == NOW + 300
    assert "in the future (limit 300s)" in refused(enc({**GOOD, "ts": NOW + 301}))
    assert decode(enc({**GOOD, "ts": NOW + 1e6}), rules=EventRules.offline())


# --- reasons ------------------------------------------------------------------------------


def test_reasons_are_one_short_line_whatever_the_input() -> None:
    key = "k\n" * 5000
    long_dup = f"{{{json.dumps(key)}: 1, {json.dumps(key)}: 2}}".encode()
    assert refused(long_dup, rules=EventRules.offline()).startswith("duplicate JSON key 'k\\nk")
    many = {**IMPRESSION, "items": [{"item_id": -i, "position": -i} for i in range(1, 900)]}
    reason = refused(enc(many), rules=EventRules.offline(), kind=EventKind.IMPRESSION)
    assert "more)" in reason
    assert clip_reason("a\n\tb\x00\u202e" + "x" * 1000).startswith("a b??")
    assert len(clip_reason("x" * 1000)) == MAX_REASON_CHARS


def test_rules_from_settings() -> None:
    s = Settings()
    rules = EventRules.of(s)
    assert rules.max_bytes == s.max_event_bytes and rules.max_watch_ratio == s.max_watch_ratio
    assert rules.max_duration_s == s.max_item_duration_s and rules.require_key
    offline = EventRules.offline()
    assert not offline.require_key and not offline.check_future and offline.max_bytes > 1 << 40
    assert offline.max_watch_seconds == EventRules().max_watch_seconds


# --- requests -----------------------------------------------------------------------------


def req(value: bytes | None, key: bytes | None = b"5", rules: EventRules = RULES) -> Any:
    return decode_request(value, key, now=NOW, rules=rules)


def req_refused(value: bytes | None, key: bytes | None = b"5") -> str:
    with pytest.raises(InvalidEvent) as info:
        req(value, key)
    reason = str(info.value)
    assert reason and "\n" not in reason and len(reason) <= MAX_REASON_CHARS
    return reason


def test_request_defaults() -> None:
    r = RecommendationRequest(request_id="r", user_id=1)
    assert r.k == 10 and r.context.device is None


def test_valid_request_decodes() -> None:
    r = req(enc({**REQUEST, "context": {"device": "tv", "ts": 1}}))
    assert r.request_id == "r1" and r.k == 3 and r.context.ts == 1.0
    assert req(enc(REQUEST), key=None, rules=EventRules.offline()).user_id == 5


@pytest.mark.parametrize(
    ("value", "key", "reason", "label"),
    [
        (
            enc(REQUEST),
            None,
            "message key missing: send the decimal user_id (e.g. b'5')",
            "key_missing",
        ),
        (
            enc(REQUEST),
            b"6",
            "does not match id 5: key must be the decimal user_id",
            "key_mismatch",
        ),
        (
            b'{"request_id": "a", "request_id": "b"}',
            b"5",
            "duplicate JSON key",
            "duplicate_json_key",
        ),
        (enc({**REQUEST, "pad": "x" * 5000}), b"5", "exceeds the 4096-byte limit", "oversize"),
        (
            enc({**REQUEST, "request_id": "r\u202e1"}),
            b"5",
            "request_id: character U+202E",
            "invalid_fields",
        ),
        (
            enc({**REQUEST, "request_id": " "}),
            b"5",
            "request_id: must not be blank",
            "invalid_fields",
        ),
        (
            enc({**REQUEST, "sent_ts": 1794315522350}),
            b"5",
            "sent_ts 1794315522350 looks like milliseconds",
            "ms_timestamp",
        ),
        (enc({**REQUEST, "context": {"ts": 1.7e12}}), b"5", "context.ts", "ms_timestamp"),
        (enc({**REQUEST, "k": "3"}), b"5", "k: Input should be a valid integer", "invalid_fields"),
        (enc({**REQUEST, "context": {"device": "\x00"}}), b"5", "context.device", "invalid_fields"),
        (None, b"5", "tombstone", "empty"),
        (b"\x00", b"5", "malformed JSON", "malformed_json"),
    ],
)
def test_invalid_request_is_refused_with_its_reason(
    value: bytes | None, key: bytes | None, reason: str, label: str
) -> None:
    got = req_refused(value, key)
    assert reason in got and reason_class(got) == label


def test_requests_have_no_far_future_check() -> None:
    assert req(enc({**REQUEST, "sent_ts": NOW + 1e6})).sent_ts == NOW + 1e6


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (enc(REQUEST), "r1"),
        (enc({**REQUEST, "k": "not a number", "user_id": "x"}), "r1"),  # the rest may be bad
        (b'{"request_id": "r1", "k": 1, "k": 2}', "r1"),  # a duplicate elsewhere is no matter
        (b'{"request_id": "r1", "request_id": "r2"}', None),  # which one? neither
        (b'{"nested": {"request_id": "r1"}}', None),
        (b'[["request_id", "r1"]]', None),
        (enc({"request_id": 5}), None),
        (enc({"request_id": ""}), None),
        (enc({"request_id": "   "}), None),
        (enc({"request_id": "r" * 129}), None),
        (enc({"request_id": "r" * 128}), "r" * 128),
        (enc({"request_id": "a\u202eb"}), None),
        (enc({"request_id": "a\x00b"}), None),
        (b'{"request_id": "\\ud800"}', None),
        (b'{"request_id": "r1", "x": NaN}', "r1"),
        (b"\xff\xfe", None),
        (b"{", None),
        (b"", None),
        (None, None),
        (b"[" * 100_000, None),
        (b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b', "request_id": "r1"}', None),
        (b'{"request_id": "r1", "pad": "' + b"x" * 10_000_000 + b'"}', None),
    ],
)
def test_request_id_of_never_raises_and_returns_only_valid_ids(
    raw: bytes | None, expected: str | None
) -> None:
    assert request_id_of(raw) == expected


def test_synthetic_request_id_is_a_valid_event_id() -> None:
    rid = synthetic_request_id("watchnext.requests", 3, 1234)
    assert rid == "invalid-3-1234"
    largest = synthetic_request_id("t" * 249, 2**31 - 1, 2**63 - 1)
    for r in (rid, largest):
        assert RecommendationRequest(request_id=r, user_id=1).request_id == r
        assert request_id_of(enc({"request_id": r})) == r
