"""The checker behind the chaos run: lost, duplicated and wrong state are told apart."""

from __future__ import annotations

from stream.consistency import discrepancies, recompute
from stream.events import EventKind, ImpressionEvent, ShownItem, WatchEvent
from stream.loadgen import make_events
from stream.state import ImpressionCounter, Limits, UserState, apply

LIMITS = Limits(history_length=10, search_tokens=12, impression_items=200, dedup_window=32)


def _states(events: list) -> dict[int, UserState]:
    got: dict[int, UserState] = {}
    for _, ev in events:
        got[ev.user_id] = apply(got.get(ev.user_id, UserState(ev.user_id)), ev, None, LIMITS)
    return got


def test_a_correct_run_has_no_discrepancies() -> None:
    events = make_events(seed=3, users=15, n=800)
    found = discrepancies(_states(events), recompute(events, LIMITS))
    assert (found.lost, found.duplicated, found.wrong_state, found.users) == (0, 0, 0, 15)


def test_a_dropped_event_counts_as_lost_and_a_missing_user_as_all_its_events() -> None:
    events = make_events(seed=3, users=15, n=800, duplicates=0.0)
    dropped = next(i for i, (k, _) in enumerate(events) if k is EventKind.WATCH)
    states = _states(events[:dropped] + events[dropped + 1 :])
    found = discrepancies(states, recompute(events, LIMITS))
    assert (found.lost, found.duplicated) == (1, 0)
    gone = events[0][1].user_id
    expected = recompute(events, LIMITS)
    del states[gone]
    mine = expected[gone]
    found = discrepancies(states, expected)
    assert found.lost >= mine.n_watches + mine.n_searches + mine.n_impressions
    assert any(f"user {gone}: no state" in e for e in found.examples)


def test_an_event_applied_twice_counts_as_duplicated() -> None:
    events = make_events(seed=3, users=15, n=800)
    kind, ev = next((k, e) for k, e in events if k is EventKind.WATCH)
    twin = WatchEvent(**{**ev.model_dump(), "event_id": ev.event_id + "-again"})
    states = _states([*events, (kind, twin)])  # same effect under another id: applied twice
    found = discrepancies(states, recompute(events, LIMITS))
    assert (found.lost, found.duplicated) == (0, 1)


def test_altered_content_with_right_counts_is_wrong_state() -> None:
    events = make_events(seed=3, users=15, n=800)
    states = _states(events)
    uid = events[0][1].user_id
    st = states[uid]
    states[uid] = UserState(**{**st.__dict__, "search_tokens": [*st.search_tokens[1:], "tampered"]})
    found = discrepancies(states, recompute(events, LIMITS))
    assert (found.lost, found.duplicated, found.wrong_state) == (0, 0, 1)
    states[10_000] = UserState(10_000)
    assert discrepancies(states, recompute(events, LIMITS)).extra_users == 1


def test_a_request_answered_twice_may_count_either_of_its_impressions() -> None:
    """A worker killed after an answer's impression reached the broker but before its state
    write did answers the request again: two versions of one impression, one event id."""
    first = ImpressionEvent(
        event_id="imp-r1",
        user_id=1,
        request_id="r1",
        items=[ShownItem(item_id=5, position=0)],
        ts=10.0,
    )
    again = first.model_copy(update={"items": [ShownItem(item_id=6, position=0)], "ts": 12.0})
    events = [(EventKind.IMPRESSION, first), (EventKind.IMPRESSION, again)]
    expected = recompute(events, LIMITS)
    for version in (first, again):
        found = discrepancies({1: apply(UserState(1), version, None, LIMITS)}, expected)
        assert (found.lost, found.duplicated, found.wrong_state) == (0, 0, 0)
    both = apply(
        apply(UserState(1), first, None, LIMITS),
        again.model_copy(update={"event_id": "x"}),
        None,
        LIMITS,
    )
    assert discrepancies({1: both}, expected).duplicated == 1
    mixed = UserState(1, impressions={5: ImpressionCounter(1, 12.0)}, n_impressions=1)
    assert discrepancies({1: mixed}, expected).wrong_state == 1
