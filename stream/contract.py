"""The contract of every message watchnext consumes: the checks over :mod:`stream.events`.

The records' types are half of the contract; this module checks the rest and imports nothing of
the project but :mod:`stream.events`. A message that breaks the contract is dead-lettered with a
one-line reason (:class:`~stream.events.InvalidEvent`, at most
:data:`~stream.events.MAX_REASON_CHARS` characters) that says what to send instead, never
guessed at. :func:`decode_event` and :func:`decode_request` check these rules in this order; the
first one broken is the reason. Each item reads: rule -- how its reason starts -- the metric
label ``stream.ingest.reason_class`` gives it.

1. A value is present -- ``empty message value (tombstone)`` -- ``empty``.
2. At most ``max_bytes`` bytes -- ``payload of N bytes exceeds the M-byte limit`` --
   ``oversize``.
3. UTF-8 JSON, finite numbers only (no ``NaN``/``Infinity`` literals), nested no deeper than
   the parser holds -- ``malformed JSON: ...`` -- ``malformed_json``.
4. No key twice in one object, at any depth (parsers disagree on which copy wins) --
   ``duplicate JSON key 'k'`` -- ``duplicate_json_key``.
5. ``schema_version`` is the JSON integer 1 (not ``true``, ``1.0`` or ``"1"``) --
   ``unsupported schema_version X (supported: 1)`` -- ``schema_version``.
6. Fields: required ones present; types exact (no ``"5"`` for 5, no ``true`` for 1, no
   ``5.0`` for an id; a JSON integer is fine for a float field); ranges; floats finite; the
   text rule (:mod:`stream.events`); an impression shows each ``item_id`` and each
   ``position`` once -- ``<field>: <what is wrong>`` -- ``invalid_fields``.
7. A Kafka key is present (when ``require_key``) -- ``message key missing: send the decimal
   user_id (e.g. b'42') as the Kafka key`` -- ``key_missing``.
8. The key is the decimal ``user_id`` (``item_id`` for uploads) -- ``message key b'x' does
   not match id 42: key must be the decimal user_id`` -- ``key_mismatch``.
9. Every timestamp (``ts``; a request's ``sent_ts`` and ``context.ts``) is in Unix seconds,
   fractions allowed; one at or above 1e11 is taken for milliseconds (or finer) --
   ``ts 1794315522350 looks like milliseconds: seconds expected (Unix epoch seconds, fractions
   allowed)`` -- ``ms_timestamp``.
10. Events only, when ``check_future``: ``ts`` at most ``max_future_skew_s`` ahead of the
    worker's clock -- ``ts N is Ms in the future (limit Ks)`` -- ``future_timestamp``.
11. Events only: ``watch_seconds`` <= ``max_watch_seconds`` and <= ``max_watch_ratio`` x
    ``item_duration_seconds`` (when given); ``item_duration_seconds`` and an upload's
    ``duration_seconds`` <= ``max_duration_s`` -- ``bounds: ...`` -- ``bounds``.

Requests skip rules 10 and 11: their timestamps are informational, and refusing a request for
a skewed client clock would only hurt the user. :meth:`EventRules.offline` (readers of records
a worker already checked) turns off rules 2, 7 and 10 and keeps the rest, so a recomputation
from those records agrees with the worker.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from stream.events import (
    EVENT_MODELS,
    MAX_PARTITION,
    SCHEMA_VERSION,
    EventKind,
    ImpressionEvent,
    InvalidEvent,
    RecommendationRequest,
    UploadEvent,
    WatchEvent,
    _Record,
    _text_problem,
)

SECONDS_BELOW = 1e11
"""Timestamps at or above this (year 5138 in seconds; March 1973 in milliseconds) are taken to
be in a finer unit than seconds and refused."""


@dataclass(frozen=True)
class EventRules:
    """The run-time half of the contract (the other half is the records' types).

    ``max_bytes``: larger payloads are refused unparsed. ``max_future_skew_s``: clock skew
    allowed for event ``ts`` when ``check_future``. ``max_watch_ratio``/``max_watch_seconds``/
    ``max_duration_s``: value bounds (a broken player clock must not become a feature).
    ``require_key``: a message without a key is refused (it would land on a random partition,
    away from its user's state).
    """

    max_bytes: int = 65536
    max_future_skew_s: float = 300.0
    max_watch_ratio: float = 3.0
    max_watch_seconds: float = 86400.0
    max_duration_s: float = 86400.0
    require_key: bool = True
    check_future: bool = True

    @classmethod
    def of(cls, settings: Any) -> EventRules:
        """The rules a worker with ``settings`` (a :class:`watchnext.settings.Settings`) uses."""
        return cls(
            max_bytes=settings.max_event_bytes,
            max_future_skew_s=settings.max_future_skew_s,
            max_watch_ratio=settings.max_watch_ratio,
            max_watch_seconds=settings.max_watch_seconds,
            max_duration_s=settings.max_item_duration_s,
        )

    @classmethod
    def offline(cls) -> EventRules:
        """Rules for re-reading records that already passed a worker (readback, training log).

        No size limit, no future check (the wall clock has moved on) and no key (files keep
        none), but the value bounds stay at their defaults, so that a recomputation from the
        records agrees with what the worker applied.
        """
        return cls(max_bytes=sys.maxsize, require_key=False, check_future=False)


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return "<unprintable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) < 1e16 else f"{x:.4g}"


class _DuplicateKey(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(f"duplicate JSON key {_short(k)}")
            seen.add(k)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number (numbers must be finite)")


_EXACT = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_no_constant)
_CONTAINERS = (dict, list)
_AT = re.compile(r"at line 1 column (\d+)$")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _n_keys(obj: Any) -> int:
    """Keys in all objects of a parsed document (after last-wins de-duplication)."""
    n, stack = 0, [obj]
    while stack:
        v = stack.pop()
        if type(v) is dict:
            n += len(v)
            stack += [x for x in v.values() if type(x) in _CONTAINERS]
        elif type(v) is list:
            stack += [x for x in v if type(x) in _CONTAINERS]
    return n


def _parse(raw: bytes) -> Any:
    """JSON to Python, refusing what the contract forbids.

    Parsed once, by pydantic's Rust parser (valid UTF-8, finite numbers, at most 200 levels).
    That parser keeps the last of duplicate keys silently, so the keys are counted too: every
    key's closing quote is followed by whitespace and ``:``, so with whitespace removed the text
    holds at least one ``":`` per key (strings can only add more). When that count equals the
    keys parsed there is no duplicate; otherwise (a duplicate, or ``":`` inside a string) the
    exact standard-library parser, about 1 us slower per event, decides.
    """
    try:
        obj = from_json(raw, allow_inf_nan=False, cache_strings="keys")
    except ValueError as exc:
        raise InvalidEvent(_json_reason(raw, str(exc))) from None
    if raw.translate(None, b" \t\n\r").count(b'":') != _n_keys(obj):
        try:
            _EXACT.decode(raw.decode("utf-8"))
        except _DuplicateKey as exc:
            raise InvalidEvent(str(exc)) from None
        except (ValueError, RecursionError) as exc:  # not after from_json; but never crash
            raise InvalidEvent(f"malformed JSON: {exc}") from None
    return obj


def _json_reason(raw: bytes, msg: str) -> str:
    """The reason for a document the parser refused, with a hint where one helps."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"malformed JSON: not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})"
    if msg.startswith("recursion limit exceeded"):
        return f"malformed JSON: nested too deeply ({msg})"
    if "escape" in msg and _SURROGATE_ESCAPE.search(raw):
        return f"malformed JSON: {msg}: lone surrogate escapes (e.g. \\ud800) are not text"
    at = _AT.search(msg)
    if at is not None:
        near = raw[max(int(at.group(1)) - 2, 0) : int(at.group(1)) + 8]
        if b"NaN" in near or b"Infinity" in near:
            return f"malformed JSON: {msg}: NaN and Infinity are not JSON (finite numbers only)"
    return f"malformed JSON: {msg}"


def _reason(err: ValidationError) -> str:
    errors = err.errors(include_url=False)
    for e in errors:
        if e["loc"] == ("schema_version",) and e["type"] == "literal_error":
            return (
                f"unsupported schema_version {_short(e.get('input'))} (supported: {SCHEMA_VERSION})"
            )
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "string_pattern_mismatch":  # only the text rule uses a pattern
            msg = _text_problem(e["input"]) or "must not be blank"
        parts.append(f"{loc}: {msg}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number"}
_JSON_TYPES.update({bool: "a boolean", type(None): "null"})


def _validate(model: type[_Record], raw: bytes | None, rules: EventRules, what: str) -> Any:
    if raw is None:
        raise InvalidEvent(f"empty message value (tombstone) on {what} topic")
    if len(raw) > rules.max_bytes:
        raise InvalidEvent(f"payload of {len(raw)} bytes exceeds the {rules.max_bytes}-byte limit")
    obj = _parse(raw)
    if not isinstance(obj, dict):
        raise InvalidEvent(f"<root>: Input should be an object, not {_JSON_TYPES[type(obj)]}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc)) from None
    except RecursionError:
        raise InvalidEvent("malformed JSON: nested too deeply") from None


def _check_key(key: bytes | None, expected: int, name: str, rules: EventRules) -> None:
    want = str(expected).encode()
    if key is None:
        if rules.require_key:
            raise InvalidEvent(
                f"message key missing: send the decimal {name} (e.g. {want!r}) as the Kafka key"
            )
    elif key != want:
        raise InvalidEvent(
            f"message key {_short(key)} does not match id {expected}: "
            f"key must be the decimal {name}"
        )


def _check_seconds(name: str, ts: float | None) -> None:
    if ts is None or ts < SECONDS_BELOW:
        return
    unit = "milliseconds" if ts < 1e14 else "microseconds" if ts < 1e17 else "nanoseconds"
    what = f"looks like {unit}" if ts < 1e20 else "is no Unix time in seconds"
    raise InvalidEvent(
        f"{name} {_num(ts)} {what}: seconds expected (Unix epoch seconds, fractions allowed)"
    )


def _check_impression(event: ImpressionEvent) -> None:
    # One page shows an item once, in one slot: a repeat would count the item twice. Checked on
    # the wire only: the state transition itself counts whatever it is given.
    for name in ("item_id", "position"):
        seen: set[int] = set()
        for i, shown in enumerate(event.items):
            value = getattr(shown, name)
            if value in seen:
                raise InvalidEvent(
                    f"items.{i}.{name}: {value} appears twice ({name}s must be unique)"
                )
            seen.add(value)


def _check_bounds(event: _Record, rules: EventRules) -> None:
    if isinstance(event, WatchEvent):
        watched, duration = event.watch_seconds, event.item_duration_seconds
        if watched > rules.max_watch_seconds:
            raise InvalidEvent(
                f"bounds: watch_seconds {watched:g} is over the {rules.max_watch_seconds:g} s limit"
            )
        if duration is not None:
            if duration > rules.max_duration_s:
                raise InvalidEvent(
                    f"bounds: item_duration_seconds {duration:g} is over the "
                    f"{rules.max_duration_s:g} s limit"
                )
            if watched > rules.max_watch_ratio * duration:
                raise InvalidEvent(
                    f"bounds: watch_seconds {watched:g} is over {rules.max_watch_ratio:g} x "
                    f"item_duration_seconds {duration:g}"
                )
    elif isinstance(event, UploadEvent) and event.duration_seconds > rules.max_duration_s:
        raise InvalidEvent(
            f"bounds: duration_seconds {event.duration_seconds:g} is over the "
            f"{rules.max_duration_s:g} s limit"
        )


def decode_event(
    kind: EventKind, raw: bytes | None, key: bytes | None, *, now: float, rules: EventRules
) -> _Record:
    """Parse and check one consumed event against its contract (module docstring).

    Args:
        kind: Which topic it came from (decides the record type).
        raw: The message value as consumed.
        key: The message key; it must be the decimal ``user_id`` (``item_id`` for uploads),
            otherwise co-partitioning with the user's state would silently break.
        now: Wall-clock seconds, for the far-future check.
        rules: The run-time limits (:meth:`EventRules.of` in a worker).

    Raises:
        InvalidEvent: with the reason that goes into the dead letter.
    """
    event = _validate(EVENT_MODELS[kind], raw, rules, "an event")
    if kind is EventKind.IMPRESSION:
        _check_impression(event)
    if kind is EventKind.UPLOAD:
        _check_key(key, event.item_id, "item_id", rules)
    else:
        _check_key(key, event.user_id, "user_id", rules)
    ts = event.ts
    _check_seconds("ts", ts)
    if rules.check_future and ts > now + rules.max_future_skew_s:
        raise InvalidEvent(
            f"ts {ts:.0f} is {ts - now:.0f}s in the future (limit {rules.max_future_skew_s:.0f}s)"
        )
    _check_bounds(event, rules)
    return event  # type: ignore[no-any-return]


def decode_request(
    raw: bytes | None, key: bytes | None, *, now: float, rules: EventRules
) -> RecommendationRequest:
    """Parse and check one consumed recommendation request (the contract of events, without
    the far-future check and the bounds; see the module docstring).

    Args:
        raw: The message value as consumed.
        key: The message key: the decimal ``user_id``, so the request meets the user's state.
        now: Wall-clock seconds (kept for symmetry with :func:`decode_event`; unused today).
        rules: The run-time limits; only ``max_bytes`` and ``require_key`` apply.

    Raises:
        InvalidEvent: with the reason for the error response and the dead letter.
    """
    del now  # requests' timestamps are informational: only their unit is checked
    request: RecommendationRequest = _validate(RecommendationRequest, raw, rules, "the request")
    _check_key(key, request.user_id, "user_id", rules)
    _check_seconds("sent_ts", request.sent_ts)
    _check_seconds("context.ts", request.context.ts)
    return request


_PEEK_BYTES = 64 * 1024


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs (tells objects from arrays of pairs)."""


_PEEK_DECODER = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=str)


def _peek(raw: bytes | None, field: str) -> list[Any] | None:
    """Every top-level value of ``field`` in a possibly malformed request, or None when the
    value is not UTF-8 JSON of at most 64 KiB with an object at the top. Never raises."""
    try:
        if not isinstance(raw, bytes) or len(raw) > _PEEK_BYTES:
            return None
        top = _PEEK_DECODER.decode(raw.decode("utf-8"))
        if not isinstance(top, _Pairs):
            return None
        return [v for k, v in top if k == field]
    except Exception:  # anything at all: a bad request must not break its own error path
        return None


def request_id_of(raw: bytes | None) -> str | None:
    """The ``request_id`` of a possibly malformed request, so its error response can be matched.

    Returns None unless the value is valid UTF-8 JSON of at most 64 KiB whose top-level object
    has exactly one ``request_id`` that is itself a valid ``EventId`` (1-128 characters, the
    text rule). Never raises: it runs on the path that handles bad input.
    """
    ids = _peek(raw, "request_id")
    if ids is None or len(ids) != 1:
        return None
    rid = ids[0]
    if isinstance(rid, str) and len(rid) <= 128 and _text_problem(rid) is None:
        return rid
    return None


def reply_partition_of(raw: bytes | None) -> int | None:
    """The ``reply_partition`` of a possibly malformed request (exactly one, a JSON integer
    >= 0), so its error response goes where its client listens; None otherwise."""
    found = _peek(raw, "reply_partition")
    if found is None or len(found) != 1:
        return None
    value = found[0]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PARTITION:
        return value
    return None


def synthetic_request_id(topic: str, partition: int, offset: int) -> str:
    """The id an error response carries when the request's own id cannot be read.

    ``invalid-<partition>-<offset>``: it names the consumed message (requests come from the one
    request topic), so the sender or an operator holding the dead letter can find it, and it is
    a valid ``EventId`` (under 40 characters). ``topic`` is taken so that a caller can pass a
    position whole (``synthetic_request_id(*position)``); it is not part of the id, which keeps
    the form clients already match on.
    """
    del topic
    return f"invalid-{int(partition)}-{int(offset)}"
