"""Batch ingest: decode, validate and apply a batch of consumed user events (no faust here).

The faust agent hands a batch of consumed messages to :func:`process_batch` together with a
``load`` callback that reads a user's current value. The result says which user values to write
(one write per user per batch, however many events the user had in it) and which dead letters
to send. Keeping this free of faust makes it testable without a broker and keeps the agent thin.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stream.contract import EventRules, decode_event
from stream.events import (
    USER_EVENT_KINDS,
    DeadLetter,
    EventKind,
    FreshWatch,
    InvalidEvent,
    WatchEvent,
    clip_reason,
)
from stream.state import Limits, Position, UserState, apply_checked, credited_page

FRESH_CONTEXT = 20  # items before a fresh watch that stand for its watcher (the record's cap)
MAX_LETTER_KEY_BYTES = 1024  # longer source keys are replaced by their sha256 as a letter's key


@dataclass(frozen=True)
class Consumed:
    """One message as read from Kafka, before validation."""

    kind: EventKind
    key: bytes | None
    value: bytes | None
    position: Position
    # the consumer's committed offset of that partition when it was read (every offset below
    # it is processed; raises the state's de-duplication floor), None when unknown
    committed: int | None = None


@dataclass
class BatchResult:
    """What a batch changes: new user values, dead letters and per-outcome counts.

    ``writes`` maps user_id to (new state, index of one of that user's messages in the batch);
    the index lets the agent write under that message's partition. ``applied`` maps user_id
    to the batch indexes of the events that changed the state (for the event→vector clock).
    """

    writes: dict[int, tuple[UserState, int]] = field(default_factory=dict)
    applied: dict[int, list[int]] = field(default_factory=dict)
    dead_letters: list[tuple[int, DeadLetter]] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (candidates version, ranker version) -> watches / watch seconds credited to that pair
    attributed: Counter[tuple[str, str]] = field(default_factory=Counter)
    attributed_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    # (batch index, record) of applied watches of items the served snapshot does not hold:
    # published for every worker's freshness overlay (stream.fresh_items)
    fresh: list[tuple[int, FreshWatch]] = field(default_factory=list)


def reason_class(reason: str) -> str:
    """A small, stable label for a dead-letter reason (metrics must not get unbounded labels).

    The labels and the reason texts they come from are listed in ``stream.contract``.
    """
    if "seconds expected" in reason:  # before "ts ": a unit mistake, not a clock one
        return "ms_timestamp"
    for prefix, label in _REASON_PREFIXES:
        if reason.startswith(prefix):
            return label
    return "invalid_fields"


_REASON_PREFIXES = (
    ("malformed JSON", "malformed_json"),
    ("duplicate JSON key", "duplicate_json_key"),
    ("unsupported schema_version", "schema_version"),
    ("payload of", "oversize"),
    ("ts ", "future_timestamp"),
    ("message key missing", "key_missing"),
    ("message key", "key_mismatch"),
    ("bounds:", "bounds"),
    ("empty message", "empty"),
    ("user-state", "state"),
    ("not a user-event topic", "kind"),
)

DEFAULT_PAYLOAD_LIMIT = 65536


def dead_letter(
    item: Consumed,
    reason: str,
    now: float,
    worker: str | None,
    *,
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
) -> DeadLetter:
    """A dead letter holding the consumed bytes (base64) and the reason."""
    return raw_dead_letter(
        item.key, item.value, item.position, reason, now, worker, payload_limit=payload_limit
    )


def letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a dead letter: the source key, or its sha256 hex when it is too long to
    be a key (the exact key, or its prefix, length and hash, is inside the letter)."""
    if key is None or len(key) <= MAX_LETTER_KEY_BYTES:
        return key
    return hashlib.sha256(key).hexdigest().encode()


def raw_dead_letter(
    key: bytes | None,
    value: bytes | None,
    position: Position,
    reason: str,
    now: float,
    worker: str | None,
    *,
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
) -> DeadLetter:
    """A dead letter for any consumed message (events or requests).

    A value (or key) longer than ``payload_limit`` bytes is kept as its first ``payload_limit``
    bytes, flagged truncated, with the whole one's length and sha256: a dead letter must fit the
    dead-letter topic whatever was sent, or the worker could not record why it refused it. With
    the reason capped too, ``len(letter.to_json())`` stays below about
    ``2 * 4/3 * payload_limit + 2 KiB`` (topic and worker names of ordinary length).
    """
    raw = value or b""
    limit = max(payload_limit, 0)
    return DeadLetter(
        source_topic=position.topic,
        partition=position.partition,
        offset=position.offset,
        key_b64=None if key is None else base64.b64encode(key[:limit]).decode(),
        raw_b64=base64.b64encode(raw[:limit]).decode(),
        error=clip_reason(reason),
        ts=now,
        worker=worker,
        raw_bytes=len(raw),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        raw_truncated=len(raw) > limit,
        key_bytes=None if key is None else len(key),
        key_sha256=None if key is None else hashlib.sha256(key).hexdigest(),
        key_truncated=key is not None and len(key) > limit,
    )


def _watch_effects(
    result: BatchResult,
    index: int,
    before: UserState,
    watch: WatchEvent,
    is_new: Callable[[int], bool] | None,
) -> None:
    """What an applied watch adds besides the state: a fresh watch for every worker's overlay
    when the served snapshot does not hold the item, and its credit to the page it came from
    (``before``: the user's state before the watch, which holds that page)."""
    if is_new is not None and is_new(watch.item_id):
        context = [w.item_id for w in before.history[-FRESH_CONTEXT:]]
        fresh = FreshWatch(
            item_id=watch.item_id, user_id=watch.user_id, ts=watch.ts, context=context
        )
        result.fresh.append((index, fresh))
    page = credited_page(before, watch) if watch.request_id else None
    if page is not None:
        pair = (page.candidates, page.ranker)
        result.attributed[pair] += 1
        result.attributed_seconds[pair] = (
            result.attributed_seconds.get(pair, 0.0) + watch.watch_seconds
        )


def process_batch(
    items: Sequence[Consumed],
    load: Callable[[int, int], UserState | None],
    *,
    limits: Limits,
    rules: EventRules,
    now: float,
    worker: str | None = None,
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
    is_new: Callable[[int], bool] | None = None,
) -> BatchResult:
    """Apply a batch in consumption order; each item ends as exactly one outcome (applied,
    duplicate, stale or dead_letter).

    Args:
        items: Messages in the order they were consumed (per partition, offset order).
        load: ``load(user_id, index)`` returns the user's stored state (None if new);
            ``index`` is the batch position of a message of that user.
        limits: State bounds.
        rules: The event contract's run-time limits (``EventRules.of(settings)``).
        now: Wall clock for the far-future check and dead-letter timestamps.
        worker: Identity written into dead letters.
        payload_limit: Bytes of value and key a dead letter keeps (``deadletter_payload_bytes``).
        is_new: ``is_new(item_id)`` when the served snapshot does not hold the item: each
            applied watch of one becomes a :class:`FreshWatch` in ``result.fresh``.
    """
    result = BatchResult()
    states: dict[int, UserState] = {}

    def refuse(index: int, item: Consumed, reason: str, label: str) -> None:
        letter = dead_letter(item, reason, now, worker, payload_limit=payload_limit)
        result.dead_letters.append((index, letter))
        result.outcomes[(item.kind.value, "dead_letter")] += 1
        result.reasons[(item.kind.value, label)] += 1

    for index, item in enumerate(items):
        if item.kind not in USER_EVENT_KINDS:  # a wiring mistake: say so, do not crash
            refuse(index, item, f"not a user-event topic: {item.kind.value}", "kind")
            continue
        try:
            event = decode_event(item.kind, item.value, item.key, now=now, rules=rules)
        except InvalidEvent as exc:
            reason = str(exc)
            refuse(index, item, reason, reason_class(reason))
            continue
        user_id: int = event.user_id  # type: ignore[attr-defined]
        state = states.get(user_id)
        if state is None:
            try:
                state = load(user_id, index) or UserState(user_id=user_id)
            except ValueError as exc:  # a stored value we cannot read: keep going, say why
                refuse(index, item, f"user-state of {user_id} unreadable: {exc}", "state")
                continue
        new, outcome = apply_checked(state, event, item.position, limits, item.committed)  # type: ignore[arg-type]
        result.outcomes[(item.kind.value, outcome)] += 1
        if outcome == "applied" and isinstance(event, WatchEvent):
            _watch_effects(result, index, state, event, is_new)
        states[user_id] = new
        if new is not state:
            result.writes[user_id] = (new, index)
            if outcome == "applied":
                result.applied.setdefault(user_id, []).append(index)
    return result
