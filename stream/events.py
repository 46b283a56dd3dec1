"""Typed, schema-versioned records for every message watchnext puts on Kafka.

Everything on the wire is UTF-8 JSON with a ``schema_version`` field. User events (watch,
search, impression, profile) and recommendation requests are keyed by the decimal ``user_id``
so that a user's events, table value and requests live on one partition; uploads are keyed by
``item_id`` (:func:`event_key`). This module imports neither Kafka nor faust nor anything else
of the project: the producers, the workers, the synthetic generator and the model's data readers
all stand on it.

The records are strict pydantic models (no silent coercion of ``"5"`` into ``5``, finite floats
only, frozen, unknown fields ignored); their types are half of the contract, and
:mod:`stream.contract` checks the other half (size, JSON, keys, units, bounds) when a message is
consumed. A message that breaks the contract raises :class:`InvalidEvent`, whose reason is one
line of at most :data:`MAX_REASON_CHARS` characters.

The text rule, for ids (``event_id``, ``request_id``), labels (``device``, ``country``,
``channel``, ``gender``, ``zip``, ``region``, ``occupation``, ``tags``, ``source``) and free
text (``query``, ``title``): no control characters (C0 with NUL, DEL, C1), no surrogates, no
line or paragraph separators and no bidi marks, embeddings, overrides or isolates (U+061C,
U+200E/F, U+202A-U+202E, U+2066-U+2069), which could make a log line or a dashboard show
something other than what was sent. Ids and labels must not be blank (empty or whitespace
only: omit an optional one instead); free text may be, since an empty search is a user
pressing enter and yields no tokens. Other characters, emoji joiners included, are fine.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1
MAX_ID = 2**63 - 1
MAX_REASON_CHARS = 300
MAX_EXCLUDE = 1000  # ids a request may exclude
MAX_PARTITION = 100_000  # a reply partition's upper bound (the topic's count is checked too)
"""Every rejection reason is one line of at most this many characters (it goes into dead
letters, logs and error responses, so a hostile payload must not make it large)."""

_FORBIDDEN_CLASS = (
    r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
)
_FORBIDDEN = re.compile(f"[{_FORBIDDEN_CLASS}]")
# The same rule for pydantic's Rust regex engine (no surrogates there: pydantic refuses them
# before any pattern runs): allowed characters only, at least one of them not a space.
_RUST_FORBIDDEN = _FORBIDDEN_CLASS.replace(r"\ud800-\udfff", "")
_TEXT_PATTERN = f"^[^{_RUST_FORBIDDEN}]*$"
_LABEL_PATTERN = f"^[^{_RUST_FORBIDDEN}]*[^{_RUST_FORBIDDEN}\\s][^{_RUST_FORBIDDEN}]*$"


def _text_problem(v: str) -> str | None:
    """Why ``v`` breaks the text rule (module docstring), or None."""
    bad = _FORBIDDEN.search(v)
    if bad is not None:
        return (
            f"character U+{ord(bad.group()):04X} at index {bad.start()} is not allowed "
            "(no control, bidi or surrogate characters)"
        )
    if not v or v.isspace():
        return "must not be blank"
    return None


# The text rule, reused by every id and text field of an input record (free text may be blank).
# It runs in pydantic's Rust regex engine, since a Python validator per field made validation
# half as slow again; ``stream.contract._reason`` turns a mismatch back into the precise
# problem.
_PRINTABLE = Field(pattern=_LABEL_PATTERN)
_PRINTABLE_OR_BLANK = Field(pattern=_TEXT_PATTERN)

Id = Annotated[int, Field(ge=0, le=MAX_ID)]
EventId = Annotated[str, Field(min_length=1, max_length=128), _PRINTABLE]
Timestamp = Annotated[float, Field(ge=0)]
ShortText = Annotated[str, Field(max_length=64), _PRINTABLE]
LongText = Annotated[str, Field(max_length=512), _PRINTABLE_OR_BLANK]


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
    # allow_inf_nan=False: every float field, nested ones included, must be finite.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = 1

    def to_json(self) -> bytes:
        """Compact JSON bytes, the wire format."""
        return self.model_dump_json(exclude_none=True).encode()

    @field_validator("schema_version", mode="before")
    @classmethod
    def _exact_version(cls, v: Any) -> Any:
        # Literal[1] alone lets ``true`` and ``1.0`` through (they compare equal to 1).
        if type(v) is not int:
            raise PydanticCustomError("literal_error", "Input should be 1")
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
    query: LongText
    ts: Timestamp
    device: ShortText | None = None


# Per candidate source (at most 8): its score for the item, and the item's 0-based rank in
# that source's own list (ranking features of the multi-source blend, paper Fig. 2).
SourceScores = Annotated[dict[ShortText, float], Field(max_length=8)]
SourceRanks = Annotated[
    dict[ShortText, Annotated[int, Field(ge=0, le=100_000)]], Field(max_length=8)
]


class ShownItem(_Record):
    """One item on a recommendation page, its 0-based position and, when known, the candidate
    source that nominated it, that source's score, and every source's score and rank (ranking
    features, paper §4.1)."""

    item_id: Id
    position: Annotated[int, Field(ge=0, le=10_000)]
    source: ShortText | None = None
    score: float | None = None
    source_scores: SourceScores | None = None
    source_ranks: SourceRanks | None = None


ModelVersions = Annotated[dict[ShortText, EventId], Field(max_length=4)]


class ImpressionEvent(_Record):
    """Items shown to a user for one request (feeds the impression counters).

    ``model_versions`` (``{"candidates": V, "ranker": V}``, as in the response) says which
    models chose the page: with ``request_id`` it lets a later watch carrying that request id
    be credited to them (online attribution).
    """

    event_id: EventId
    user_id: Id
    request_id: EventId | None = None
    items: Annotated[list[ShownItem], Field(min_length=1, max_length=1000)]
    ts: Timestamp
    model_versions: ModelVersions | None = None


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
    title: LongText | None = None
    tags: Annotated[list[ShortText], Field(max_length=64)] = Field(default_factory=list)
    # a takedown: the item is never served again (every worker, no retrain) until an upload
    # with a newer ts and no ``removed`` restores it (stream.takedowns)
    removed: bool = False


class FreshWatch(_Record):
    """A watch of an item the served snapshot does not hold, as workers share it on the
    ``fresh-watches`` topic (keyed by item): who watched it and the items they watched just
    before, oldest first, which the freshness overlay folds the item in from on every worker
    (:mod:`stream.fresh_items`). Written by workers; read back validated like any input."""

    item_id: Id
    user_id: Id
    ts: Timestamp
    context: Annotated[list[Id], Field(max_length=20)] = Field(default_factory=list)


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
    # item ids never returned (shown elsewhere on the page, not licensed in the region...)
    exclude: Annotated[list[Id], Field(max_length=MAX_EXCLUDE)] | None = None
    # answered later than this many ms after ``sent_ts`` (else the record's Kafka timestamp),
    # the response is still sent, with ``expired: true``, and records no impression
    deadline_ms: Annotated[int, Field(ge=1, le=3_600_000)] | None = None
    # the partition of the response topic to answer on (one client instance reads only its
    # own); None: the partition of the request_id key, as before
    reply_partition: Annotated[int, Field(ge=0, le=MAX_PARTITION)] | None = None


class RecommendedItem(_Record):
    """One recommendation with its ranking score and the ranker's expected watch time."""

    item_id: Id
    score: float
    expected_watch_seconds: float | None = None
    source: ShortText = "candidates"
    candidate_score: float | None = None
    source_scores: SourceScores | None = None
    source_ranks: SourceRanks | None = None


class RecommendationResponse(_Record):
    """The answer to a request: items, model versions and per-stage latency (ms)."""

    request_id: str
    user_id: int | None = None
    items: list[RecommendedItem] = Field(default_factory=list)
    model_versions: dict[str, str] = Field(default_factory=dict)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    # set when the request had a ``deadline_ms``: true when it was answered past it
    expired: bool | None = None


class DeadLetter(_Record):
    """An input that could not be applied, with everything needed to inspect or replay it.

    ``raw_b64`` and ``key_b64`` are the consumed bytes (base64): exact, unless ``raw_truncated``
    (``key_truncated``) says only the leading bytes were kept, so that a dead letter always fits
    its topic. ``raw_bytes``/``raw_sha256`` (``key_bytes``/``key_sha256``) are the length and
    sha256 of the whole consumed value (key), so a truncated one can still be recognised; they
    are None in letters of workers older than these fields.
    """

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None = None  # None: no key (a default, since to_json leaves None out)
    raw_b64: str
    error: str
    ts: float
    worker: str | None = None
    raw_bytes: int | None = None
    raw_sha256: str | None = None
    raw_truncated: bool = False
    key_bytes: int | None = None
    key_sha256: str | None = None
    key_truncated: bool = False


EVENT_MODELS: dict[EventKind, type[_Record]] = {
    EventKind.WATCH: WatchEvent,
    EventKind.SEARCH: SearchEvent,
    EventKind.IMPRESSION: ImpressionEvent,
    EventKind.PROFILE: ProfileEvent,
    EventKind.UPLOAD: UploadEvent,
}

UserEvent = WatchEvent | SearchEvent | ImpressionEvent | ProfileEvent


class InvalidEvent(ValueError):
    """A message that breaks its contract; ``str()`` is the one-line reason (capped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(clip_reason(reason))


_WHITESPACE = re.compile(r"\s+")


def clip_reason(reason: str) -> str:
    """``reason`` as one line of printable text of at most :data:`MAX_REASON_CHARS` chars."""
    line = _FORBIDDEN.sub("?", _WHITESPACE.sub(" ", reason)).strip()
    if len(line) > MAX_REASON_CHARS:
        line = line[: MAX_REASON_CHARS - 3] + "..."
    return line or "invalid"


def event_key(kind: EventKind, event: _Record) -> bytes:
    """The Kafka key for an event: the user id, or the item id for uploads."""
    if kind is EventKind.UPLOAD:
        return str(event.item_id).encode()  # type: ignore[attr-defined]
    return str(event.user_id).encode()  # type: ignore[attr-defined]
