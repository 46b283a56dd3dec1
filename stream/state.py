"""Per-user state and its pure, idempotent transition ``apply(state, event, position)``.

One value per user holds everything the models need at request time: the rolling watch history,
the search-token bag, impression counters, profile fields and the bookkeeping that makes a
replayed event a no-op. Delivery is at-least-once, so idempotency is built in two layers:

1. **Offsets.** Per input topic-partition, ``applied[topic/partition]`` is a floor: every
   offset of this user at or below it has been applied. ``applied_above[topic/partition]``
   holds the offsets applied above the floor, so a record is a duplicate exactly when its
   offset is at or below the floor or in that set, whatever order records arrive in. The floor
   rises to the partition's committed offset (less one) as the consumer commits, since the
   delivery barrier commits an offset only after every effect of every record below it reached
   the broker; so the set holds only the few offsets since the last commit. With a floor alone
   (the last offset applied, as before), a record read again *after* later records of the same
   user (a partition rewound to a record a fetch had skipped) was taken for a replay and lost.
2. **Event ids.** A bounded window of recent ``event_id``s catches a producer that sent the same
   event twice at different offsets (e.g. a replayed input file). The window is kept per event
   kind (``dedup_window`` ids of each): a producer's duplicate sits on the same topic as its
   original, and a worker reads its topics at different paces (after a restart a search
   partition lagged the watch partitions by 40 events of one user), so one shared window let
   a duplicate search through after the watches had pushed its original out.

Nothing here imports Kafka or faust; agents decode, validate, call :func:`apply` and write.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from bisect import bisect_right, insort
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from stream.events import ImpressionEvent, ProfileEvent, SearchEvent, UserEvent, WatchEvent

STATE_VERSION = 2  # MessagePack behind a one-byte tag; version 1 (JSON) is still read
_BINARY_TAG = b"\x02"
_TOKEN_RE = re.compile(r"[0-9a-z]+")


class Position(NamedTuple):
    """Where an event was read: the identity used for offset-based de-duplication."""

    topic: str
    partition: int
    offset: int

    @property
    def key(self) -> str:
        return f"{self.topic}/{self.partition}"


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a user's value small; all are ``Settings`` fields."""

    history_length: int = 50
    search_tokens: int = 50
    impression_items: int = 200
    dedup_window: int = 32
    watched_items: int = 500
    attribution_pages: int = 16
    attribution_items: int = 50

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits a worker with ``settings`` (a :class:`watchnext.settings.Settings`) uses."""
        return cls(
            history_length=settings.history_length,
            search_tokens=settings.search_tokens,
            impression_items=settings.impression_items,
            dedup_window=settings.dedup_window,
            watched_items=settings.watched_items,
            attribution_pages=settings.attribution_pages,
            attribution_items=settings.attribution_items,
        )


class Watch(NamedTuple):
    """One entry of the rolling watch history."""

    ts: float
    item_id: int
    watch_seconds: float


class ServedPage(NamedTuple):
    """A page the user was shown and the models that chose it (online attribution)."""

    request_id: str
    ts: float
    candidates: str
    ranker: str
    items: tuple[int, ...]


class ImpressionCounter(NamedTuple):
    """How often an item was shown to the user and when last (paper §4.1 'impression frequency')."""

    shown: int
    last_ts: float


@dataclass(frozen=True)
class Profile:
    """Demographics and geography; replaced whole by a newer profile event."""

    ts: float
    age: int | None = None
    gender: str | None = None
    zip: str | None = None
    region: str | None = None
    occupation: str | None = None


@dataclass(frozen=True)
class UserState:
    """Everything the worker keeps for one user (one RocksDB value)."""

    user_id: int
    history: tuple[Watch, ...] = ()
    search_tokens: tuple[str, ...] = ()
    impressions: dict[int, ImpressionCounter] = field(default_factory=dict)
    profile: Profile | None = None
    device: str | None = None
    country: str | None = None
    n_watches: int = 0
    n_searches: int = 0
    n_impressions: int = 0
    applied: dict[str, int] = field(default_factory=dict)
    recent_event_ids: tuple[str, ...] = ()
    # one letter per id above, its event kind (``_KIND_LETTER``); shorter for states written
    # before kinds were kept: their oldest ids have no kind and go first
    recent_event_kinds: str = ""
    # per input topic-partition: offsets applied above ``applied``'s floor (ascending)
    applied_above: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # event time of each entry of ``search_tokens`` (shorter for states written before it was
    # kept: their oldest tokens have none and sort first)
    search_ts: tuple[float, ...] = ()
    # distinct item ids the user watched, latest arrival last, at most Limits.watched_items:
    # serving never recommends them again, also after they left the rolling ``history`` (a
    # quarter of the served top 10 on ml-100k were such repeats without it). States written
    # before it have it empty and fill it as watches arrive.
    watched: tuple[int, ...] = ()
    # the newest pages shown with their model versions, oldest first, at most
    # Limits.attribution_pages (empty in states written before attribution)
    served: tuple[ServedPage, ...] = ()

    def seen_items(self) -> set[int]:
        """Everything the state knows the user watched: the distinct ``watched`` ids, and the
        rolling history for states written before them (never recommended again; serving and
        the ranker's blend pages exclude the same set)."""
        return {w.item_id for w in self.history}.union(self.watched)

    @property
    def last_watch_ts(self) -> float | None:
        """Time of the latest watch (by event time), or None."""
        return max((w.ts for w in self.history), default=None)


def _evolve(state: UserState, **changes: Any) -> UserState:
    """``dataclasses.replace`` without re-running ``__init__`` (a third of ``apply``'s time).

    Safe because every UserState field is assigned as given (no ``__post_init__``, no
    conversion): copying the instance dict and overriding fields is what ``replace`` does.
    """
    new = object.__new__(UserState)
    fields = new.__dict__
    fields.update(state.__dict__)
    fields.update(changes)
    return new


def tokenize(query: str) -> list[str]:
    """Unigrams and bigrams of a query, lower-cased (paper §3.2: an unordered bag of tokens)."""
    words = _TOKEN_RE.findall(query.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def apply(
    state: UserState,
    event: UserEvent,
    position: Position | None,
    limits: Limits,
    committed: int | None = None,
) -> UserState:
    """Return the state after ``event``; the input state is never modified.

    Applying the same (event, position) twice gives the same result as applying it once, in
    any order with other events. ``position`` is None for events that did not come from Kafka
    (tests, offline replays); then only the event-id window de-duplicates. ``committed`` is
    the consumer's committed offset of that partition when the event was read (the next offset
    to read, every one below it processed), None when unknown.
    """
    return apply_checked(state, event, position, limits, committed)[0]


def apply_checked(
    state: UserState,
    event: UserEvent,
    position: Position | None,
    limits: Limits,
    committed: int | None = None,
) -> tuple[UserState, str]:
    """Like :func:`apply`, also saying what happened: ``applied``, ``duplicate`` or ``stale``
    (a profile older than the stored one)."""
    if position is not None and was_applied(state, position):
        return state, "duplicate"
    event_id = event.event_id
    duplicate = event_id is not None and event_id in state.recent_event_ids
    new = state if duplicate else _apply_effect(state, event, limits)
    outcome = "duplicate" if duplicate else ("applied" if new is not state else "stale")
    if position is not None:
        new = _record_offset(new, position, committed)
    if not duplicate and event_id is not None and limits.dedup_window > 0:
        ids, kinds = _remember(
            new.recent_event_ids,
            new.recent_event_kinds,
            event_id,
            _KIND_LETTER[type(event)],
            limits.dedup_window,
        )
        new = _evolve(new, recent_event_ids=ids, recent_event_kinds=kinds)
    return new, outcome


ABOVE_FLOOR_MAX = 64  # offsets kept above a partition's floor; beyond, the floor rises to them


def was_applied(state: UserState, position: Position) -> bool:
    """Whether the record at ``position`` has been applied to ``state`` already."""
    key = position.key
    if position.offset <= state.applied.get(key, -1):
        return True
    return position.offset in state.applied_above.get(key, ())


def _record_offset(state: UserState, position: Position, committed: int | None) -> UserState:
    """``state`` with ``position`` marked applied; the floor raised to ``committed - 1``.

    Past ``ABOVE_FLOOR_MAX`` offsets above the floor (that many records of one user in one
    partition with no commit in between: a consumer that has not committed yet, an offline
    replay) the floor rises to the oldest kept one, i.e. to the previous, order-dependent
    rule for those offsets.
    """
    key = position.key
    floor = state.applied.get(key, -1)
    if committed is not None:
        floor = max(floor, committed - 1)
    kept = sorted({o for o in state.applied_above.get(key, ()) if o > floor} | {position.offset})
    if kept[0] <= floor:
        kept = kept[1:]  # the record itself is below the commit: the floor covers it
    if len(kept) > ABOVE_FLOOR_MAX:
        floor = kept[-ABOVE_FLOOR_MAX - 1]
        kept = kept[-ABOVE_FLOOR_MAX:]
    applied = dict(state.applied)
    above = dict(state.applied_above)
    if floor >= 0:
        applied[key] = floor
    if kept:
        above[key] = tuple(kept)
    else:
        above.pop(key, None)
    return _evolve(state, applied=applied, applied_above=above)


_KIND_LETTER: dict[type, str] = {
    WatchEvent: "w",
    SearchEvent: "s",
    ImpressionEvent: "i",
    ProfileEvent: "p",
}


def _remember(
    ids: tuple[str, ...], kinds: str, event_id: str, kind: str, window: int
) -> tuple[tuple[str, ...], str]:
    """``ids`` plus ``event_id``, keeping the newest ``window`` ids of each kind.

    Ids without a kind (a state written before kinds were kept) are the oldest; they are
    dropped once the window is full, as the single window of those states did.
    """
    untyped = len(ids) - len(kinds)
    ids = (*ids, event_id)
    kinds = kinds + kind
    drop = -1
    if kinds.count(kind) > window:
        drop = untyped + kinds.index(kind)  # the oldest of this kind
    elif untyped > 0 and len(ids) > window:
        drop = 0  # the oldest untyped id
    if drop < 0:
        return ids, kinds
    if drop >= untyped:
        k = drop - untyped
        kinds = kinds[:k] + kinds[k + 1 :]
    return ids[:drop] + ids[drop + 1 :], kinds


def _remember_page(
    pages: tuple[ServedPage, ...], event: ImpressionEvent, limits: Limits
) -> tuple[ServedPage, ...]:
    """``pages`` with ``event``'s page added (when it names its request and both model
    versions), in event-time order, the newest ``attribution_pages`` kept."""
    versions = event.model_versions or {}
    if limits.attribution_pages == 0 or event.request_id is None:
        return pages
    if "candidates" not in versions or "ranker" not in versions:
        return pages
    page = ServedPage(
        event.request_id,
        event.ts,
        versions["candidates"],
        versions["ranker"],
        tuple(it.item_id for it in event.items[: limits.attribution_items]),
    )
    kept = [p for p in pages if p.request_id != page.request_id]
    insort(kept, page, key=lambda p: p.ts)
    return tuple(kept[-limits.attribution_pages :])


def credited_page(state: UserState, event: UserEvent) -> ServedPage | None:
    """The page a watch is credited to: the one of its ``request_id`` that showed its item."""
    request_id = getattr(event, "request_id", None)
    if not isinstance(event, WatchEvent) or request_id is None:
        return None
    for page in reversed(state.served):
        if page.request_id == request_id:
            return page if event.item_id in page.items else None
    return None


def _apply_effect(state: UserState, event: UserEvent, limits: Limits) -> UserState:
    if isinstance(event, WatchEvent):
        history = list(state.history)
        # Kept in event-time order; a late event lands where it belongs (stable for ties).
        insort(history, Watch(event.ts, event.item_id, event.watch_seconds), key=lambda w: w.ts)
        item = event.item_id
        watched = state.watched
        if item in watched:
            watched = tuple(i for i in watched if i != item)
        return _evolve(
            state,
            history=tuple(history[-limits.history_length :]),
            watched=(*watched, item)[-limits.watched_items :],
            n_watches=state.n_watches + 1,
            device=event.device or state.device,
            country=event.country or state.country,
        )
    if isinstance(event, SearchEvent):
        tokens = list(state.search_tokens)
        times = list(state.search_ts[-len(tokens) :]) if tokens else []
        times = [-math.inf] * (len(tokens) - len(times)) + times
        # in event-time order like the history, so a search applied late (read again after
        # later ones) lands where it belongs; ties keep arrival order
        at = bisect_right(times, event.ts)
        new_tokens = tokenize(event.query)
        tokens[at:at] = new_tokens
        times[at:at] = [event.ts] * len(new_tokens)
        return _evolve(
            state,
            search_tokens=tuple(tokens[-limits.search_tokens :]),
            search_ts=tuple(times[-limits.search_tokens :]),
            n_searches=state.n_searches + 1,
            device=event.device or state.device,
        )
    if isinstance(event, ImpressionEvent):
        counters = dict(state.impressions)
        for shown in event.items:
            old = counters.get(shown.item_id)
            if old is None:
                counters[shown.item_id] = ImpressionCounter(1, event.ts)
            else:
                counters[shown.item_id] = ImpressionCounter(
                    old.shown + 1, max(old.last_ts, event.ts)
                )
        if len(counters) > limits.impression_items:
            # Evict the items shown longest ago; ties broken by item id for determinism.
            keep = sorted(counters.items(), key=lambda kv: (kv[1].last_ts, kv[0]))
            counters = dict(keep[-limits.impression_items :])
        return _evolve(
            state,
            impressions=counters,
            n_impressions=state.n_impressions + 1,
            served=_remember_page(state.served, event, limits),
        )
    if isinstance(event, ProfileEvent):
        if state.profile is not None and event.ts < state.profile.ts:
            return state  # an older profile never overwrites a newer one
        profile = Profile(
            ts=event.ts,
            age=event.age,
            gender=event.gender,
            zip=event.zip,
            region=event.region,
            occupation=event.occupation,
        )
        return _evolve(state, profile=profile)
    raise TypeError(f"not a user event: {type(event).__name__}")


# --- codec ------------------------------------------------------------------------------------
#
# Version 2 (written): the tag byte 0x02, then MessagePack of the UserState dataclass (msgspec).
# Version 1 (read only): compact JSON, ``{"v":1,...}``. A value's first byte says which: JSON
# starts with ``{``. Measured at the state caps (50 watches, 50 tokens, 200 impression
# counters, 32 event ids): JSON ~7.2 KB, 180 µs encode + 220 µs decode; MessagePack ~4.9 KB,
# 6 µs + 32 µs. The decoder checks every field's type, so a corrupt value fails loudly here
# (ValueError) instead of as a wrong-typed state later.

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(UserState)


def encode(state: UserState) -> bytes:
    """The RocksDB value and changelog record of ``state`` (version 2)."""
    return _BINARY_TAG + _ENCODER.encode(state)


def decode(raw: bytes) -> UserState:
    """Inverse of :func:`encode`; also reads version 1 (JSON). ValueError on anything else."""
    head = raw[:1]
    if head == _BINARY_TAG:
        try:
            return _with_watched(_DECODER.decode(memoryview(raw)[1:]))
        except msgspec.MsgspecError as exc:
            raise ValueError(f"corrupt user-state value: {exc}") from exc
    if head == b"{":
        return decode_v1(raw)
    raise ValueError(f"unsupported user-state encoding (first byte {head!r})")


def _with_watched(state: UserState) -> UserState:
    """A state written before ``watched`` existed (a history but no watched ids) starts its
    watched list from the history it has, so serving keeps excluding what it knows."""
    if state.watched or not state.history:
        return state
    return _evolve(state, watched=tuple(dict.fromkeys(w.item_id for w in state.history)))


def encode_v1(state: UserState) -> bytes:
    """Version 1 (JSON), as workers before version 2 wrote it; kept to test reading it."""
    doc: dict[str, Any] = {
        "v": 1,
        "u": state.user_id,
        "h": [list(w) for w in state.history],
        "s": list(state.search_tokens),
        "i": {str(k): list(c) for k, c in state.impressions.items()},
        "n": [state.n_watches, state.n_searches, state.n_impressions],
        # version 1 kept the last offset applied per partition
        "a": {
            key: max([state.applied.get(key, -1), *state.applied_above.get(key, ())])
            for key in {*state.applied, *state.applied_above}
        },
        "e": list(state.recent_event_ids),
    }
    if state.profile is not None:
        doc["p"] = {k: v for k, v in state.profile.__dict__.items() if v is not None}
    if state.device is not None:
        doc["d"] = state.device
    if state.country is not None:
        doc["c"] = state.country
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_v1(raw: bytes) -> UserState:
    """A version-1 (JSON) value; raises ValueError on a value of another version."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt user-state value: {exc}") from exc
    version = doc.get("v") if isinstance(doc, dict) else None
    if version != 1:
        raise ValueError(f"unsupported user-state version {version!r}")
    try:
        n_w, n_s, n_i = doc["n"]
        return _with_watched(
            UserState(
                user_id=doc["u"],
                history=tuple(Watch(*w) for w in doc["h"]),
                search_tokens=tuple(doc["s"]),
                impressions={int(k): ImpressionCounter(*c) for k, c in doc["i"].items()},
                profile=Profile(**doc["p"]) if "p" in doc else None,
                device=doc.get("d"),
                country=doc.get("c"),
                n_watches=n_w,
                n_searches=n_s,
                n_impressions=n_i,
                applied=dict(doc["a"]),
                recent_event_ids=tuple(doc["e"]),
            )
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"corrupt user-state value: {type(exc).__name__}: {exc}") from exc


def summary(state: UserState, last: int = 5) -> dict[str, Any]:
    """A readable digest of a state for the demo and ``watchnext state``."""
    top_impr = sorted(state.impressions.items(), key=lambda kv: -kv[1].shown)[:last]
    return {
        "user_id": state.user_id,
        "watches": state.n_watches,
        "last_watched": [w.item_id for w in state.history[-last:]],
        "searches": state.n_searches,
        "search_tokens": list(state.search_tokens[-last:]),
        "impressions": {k: c.shown for k, c in top_impr},
        "profile": None
        if state.profile is None
        else {k: v for k, v in state.profile.__dict__.items() if v is not None and k != "ts"},
    }
