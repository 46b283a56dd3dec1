"""Batch ingest: decode, validate and apply a batch of consumed user events (no faust here).

The faust agent hands a batch of consumed messages to :func:`process_batch` together with a
``load`` callback that reads a user's current value. The result says which user values to write
(one write per user per batch, however many events the user had in it) and which dead letters
to send. Keeping this free of faust makes it testable without a broker and keeps the agent thin.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stream.events import DeadLetter, EventKind, InvalidEvent, decode_event
from stream.state import Limits, Position, UserState, apply_checked


@dataclass(frozen=True)
class Consumed:
    """One message as read from Kafka, before validation."""

    kind: EventKind
    key: bytes | None
    value: bytes | None
    position: Position


@dataclass
class BatchResult:
    """What a batch changes: new user values, dead letters and per-outcome counts.

    ``writes`` maps user_id to (new state, index of one of that user's messages in the batch);
    the index lets the agent write under that message's partition.
    """

    writes: dict[int, tuple[UserState, int]] = field(default_factory=dict)
    dead_letters: list[tuple[int, DeadLetter]] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)


def reason_class(reason: str) -> str:
    """A small, stable label for a dead-letter reason (metrics must not get unbounded labels)."""
    for prefix, label in (
        ("malformed JSON", "malformed_json"),
        ("unsupported schema_version", "schema_version"),
        ("payload of", "oversize"),
        ("ts ", "future_timestamp"),
        ("message key", "key_mismatch"),
        ("empty message", "empty"),
        ("user-state", "state"),
    ):
        if reason.startswith(prefix):
            return label
    return "invalid_fields"


def dead_letter(item: Consumed, reason: str, now: float, worker: str | None) -> DeadLetter:
    """A dead letter holding the exact consumed bytes (base64) and the reason."""
    return raw_dead_letter(item.key, item.value, item.position, reason, now, worker)


def raw_dead_letter(
    key: bytes | None,
    value: bytes | None,
    position: Position,
    reason: str,
    now: float,
    worker: str | None,
) -> DeadLetter:
    """A dead letter for any consumed message (events or requests)."""
    return DeadLetter(
        source_topic=position.topic,
        partition=position.partition,
        offset=position.offset,
        key_b64=None if key is None else base64.b64encode(key).decode(),
        raw_b64=base64.b64encode(value or b"").decode(),
        error=reason,
        ts=now,
        worker=worker,
    )


def process_batch(
    items: Sequence[Consumed],
    load: Callable[[int, int], UserState | None],
    *,
    limits: Limits,
    now: float,
    max_bytes: int,
    max_future_skew_s: float,
    worker: str | None = None,
) -> BatchResult:
    """Apply a batch in consumption order.

    Args:
        items: Messages in the order they were consumed (per partition, offset order).
        load: ``load(user_id, index)`` returns the user's stored state (None if new);
            ``index`` is the batch position of a message of that user.
        limits: State bounds.
        now: Wall clock for the far-future check and dead-letter timestamps.
        max_bytes: Larger payloads are dead-lettered unparsed.
        max_future_skew_s: Allowed clock skew for event timestamps.
        worker: Identity written into dead letters.
    """
    result = BatchResult()
    states: dict[int, UserState] = {}
    for index, item in enumerate(items):
        kind = item.kind.value
        try:
            event = decode_event(
                item.kind,
                item.value,
                item.key,
                now=now,
                max_bytes=max_bytes,
                max_future_skew_s=max_future_skew_s,
            )
        except InvalidEvent as exc:
            reason = str(exc)
            result.dead_letters.append((index, dead_letter(item, reason, now, worker)))
            result.outcomes[(kind, "dead_letter")] += 1
            result.reasons[(kind, reason_class(reason))] += 1
            continue
        user_id: int = event.user_id  # type: ignore[attr-defined]
        state = states.get(user_id)
        if state is None:
            try:
                state = load(user_id, index) or UserState(user_id=user_id)
            except ValueError as exc:  # a stored value we cannot read: keep going, say why
                reason = f"user-state of {user_id} unreadable: {exc}"
                result.dead_letters.append((index, dead_letter(item, reason, now, worker)))
                result.outcomes[(kind, "dead_letter")] += 1
                result.reasons[(kind, "state")] += 1
                continue
        new, outcome = apply_checked(state, event, item.position, limits)  # type: ignore[arg-type]
        result.outcomes[(kind, outcome)] += 1
        states[user_id] = new
        if new is not state:
            result.writes[user_id] = (new, index)
    return result
