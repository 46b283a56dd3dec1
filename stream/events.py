"""Typed, schema-versioned records for every message watchnext puts on Kafka.

Everything on the wire is UTF-8 JSON with a ``schema_version`` field. User events (watch,
search, impression, profile) and recommendation requests are keyed by the decimal ``user_id``
so that a user's events, table value and requests live on one partition; uploads are keyed by
``item_id``. This module imports neither Kafka nor faust: producers, workers, the synthetic
generator and the model's data readers all share it.

Validation is strict (no silent coercion of ``"5"`` into ``5``): an event that does not match
its contract is dead-lettered with the reason, never guessed at.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
MAX_ID = 2**63 - 1

Id = Annotated[int, Field(ge=0, le=MAX_ID)]
EventId = Annotated[str, Field(min_length=1, max_length=128)]
Timestamp = Annotated[float, Field(ge=0)]
ShortText = Annotated[str, Field(max_length=64)]


class EventKind(StrEnum):
    """Logical topics; ``Settings.topic(kind)`` gives the Kafka topic name."""

    WATCH = "watch"
    SEARCH = "search"
    IMPRESSION = "impression"
    PROFILE = "profile"
    UPLOAD = "upload"


USER_EVENT_KINDS: tuple[EventKind, ...] = (
    EventKind.WATCH,
    EventKind.SEARCH,
    EventKind.IMPRESSION,
    EventKind.PROFILE,
)


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    schema_version: Literal[1] = 1

    def to_json(self) -> bytes:
        """Compact JSON bytes, the wire format."""
        return self.model_dump_json(exclude_none=True).encode()

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class WatchEvent(_Record):
    """A user watched (part of) an item. ``request_id`` links it to the recommendation shown."""

    event_id: EventId
    user_id: Id
    item_id: Id
    ts: Timestamp
    watch_seconds: Annotated[float, Field(ge=0)]
    item_duration_seconds: Annotated[float, Field(gt=0)] | None = None
    device: ShortText | None = None
    country: ShortText | None = None
    request_id: EventId | None = None


class SearchEvent(_Record):
    """A search query; the worker keeps only its unigram/bigram tokens (paper §3.2)."""

    event_id: EventId
    user_id: Id
    query: Annotated[str, Field(max_length=512)]
    ts: Timestamp
    device: ShortText | None = None


class ShownItem(_Record):
    """One item on a recommendation page, its 0-based position and, when known, the candidate
    source that nominated it and that source's score (ranking features, paper §4.1)."""

    item_id: Id
    position: Annotated[int, Field(ge=0, le=10_000)]
    source: ShortText | None = None
    score: Annotated[float, Field(allow_inf_nan=False)] | None = None


class ImpressionEvent(_Record):
    """Items shown to a user for one request (feeds the impression counters)."""

    event_id: EventId
    user_id: Id
    request_id: EventId | None = None
    items: Annotated[list[ShownItem], Field(min_length=1, max_length=1000)]
    ts: Timestamp


class ProfileEvent(_Record):
    """Demographics and geography of a user; last writer (by ``ts``) wins."""

    user_id: Id
    ts: Timestamp
    event_id: EventId | None = None
    age: Annotated[int, Field(ge=0, le=130)] | None = None
    gender: ShortText | None = None
    zip: ShortText | None = None
    region: ShortText | None = None
    occupation: ShortText | None = None


class UploadEvent(_Record):
    """A new item in the catalogue (keyed by ``item_id``)."""

    item_id: Id
    ts: Timestamp
    duration_seconds: Annotated[float, Field(gt=0)]
    channel: ShortText | None = None
    title: Annotated[str, Field(max_length=512)] | None = None
    tags: Annotated[list[ShortText], Field(max_length=64)] = Field(default_factory=list)


class RequestContext(_Record):
    """Request-time context (paper: device, geography; example age is 0 at serving)."""

    device: ShortText | None = None
    country: ShortText | None = None
    ts: Timestamp | None = None


class RecommendationRequest(_Record):
    """Ask for ``k`` recommendations for ``user_id``; answered on the response topic."""

    request_id: EventId
    user_id: Id
    k: Annotated[int, Field(ge=1, le=500)] = 10
    context: RequestContext = Field(default_factory=RequestContext)
    sent_ts: Timestamp | None = None


class RecommendedItem(_Record):
    """One recommendation with its ranking score and the ranker's expected watch time."""

    item_id: Id
    score: float
    expected_watch_seconds: float | None = None
    source: ShortText = "candidates"
    candidate_score: float | None = None


class RecommendationResponse(_Record):
    """The answer to a request: items, model versions and per-stage latency (ms)."""

    request_id: str
    user_id: int | None = None
    items: list[RecommendedItem] = Field(default_factory=list)
    model_versions: dict[str, str] = Field(default_factory=dict)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    error: str | None = None


class DeadLetter(_Record):
    """An input that could not be applied, with everything needed to inspect or replay it.

    ``raw_b64`` and ``key_b64`` are the exact bytes consumed (base64), so nothing is lost.
    """

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None
    raw_b64: str
    error: str
    ts: float
    worker: str | None = None


EVENT_MODELS: dict[EventKind, type[_Record]] = {
    EventKind.WATCH: WatchEvent,
    EventKind.SEARCH: SearchEvent,
    EventKind.IMPRESSION: ImpressionEvent,
    EventKind.PROFILE: ProfileEvent,
    EventKind.UPLOAD: UploadEvent,
}

UserEvent = WatchEvent | SearchEvent | ImpressionEvent | ProfileEvent


class InvalidEvent(ValueError):
    """Raised by :func:`decode_event` with a one-line, human-readable reason."""


def _reason(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["loc"] == ("schema_version",) and e["type"] == "literal_error":
            return f"unsupported schema_version {e.get('input')!r} (supported: {SCHEMA_VERSION})"
        if e["type"] == "json_invalid":
            return f"malformed JSON: {e['msg']}"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)[:1000]


def decode_event(
    kind: EventKind,
    raw: bytes | None,
    key: bytes | None,
    *,
    now: float,
    max_bytes: int,
    max_future_skew_s: float,
) -> _Record:
    """Parse and validate one consumed message.

    Args:
        kind: Which topic it came from (decides the contract).
        raw: The message value as consumed.
        key: The message key; for user events it must equal the decimal ``user_id``,
            otherwise co-partitioning with the user's state would silently break.
        now: Wall-clock seconds, for the far-future check.
        max_bytes: Payloads larger than this are refused before parsing.
        max_future_skew_s: How far in the future ``ts`` may lie (clock skew allowance).

    Raises:
        InvalidEvent: with the reason that goes into the dead letter.
    """
    if raw is None:
        raise InvalidEvent("empty message value (tombstone) on an event topic")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"payload of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    model = EVENT_MODELS[kind]
    try:
        event = model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc)) from None
    ts = event.ts  # type: ignore[attr-defined]
    if ts > now + max_future_skew_s:
        raise InvalidEvent(
            f"ts {ts:.0f} is {ts - now:.0f}s in the future (limit {max_future_skew_s:.0f}s)"
        )
    expected_key = str(event.item_id if kind is EventKind.UPLOAD else event.user_id).encode()  # type: ignore[attr-defined]
    if key is not None and key != expected_key:
        raise InvalidEvent(f"message key {key[:40]!r} does not match id {expected_key.decode()}")
    return event


def event_key(kind: EventKind, event: _Record) -> bytes:
    """The Kafka key for an event: the user id, or the item id for uploads."""
    if kind is EventKind.UPLOAD:
        return str(event.item_id).encode()  # type: ignore[attr-defined]
    return str(event.user_id).encode()  # type: ignore[attr-defined]
