"""Unit tests of the pure user-state transition (no broker)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events import ImpressionEvent, ProfileEvent, SearchEvent, ShownItem, WatchEvent
from stream.state import Limits, Position, UserState, apply, apply_checked, decode, encode, tokenize
from tests.eventgen import assert_states_match, make_events, recompute

LIMITS = Limits(history_length=5, search_tokens=6, impression_items=4, dedup_window=8)

ids = st.integers(min_value=0, max_value=3)
times = st.floats(min_value=0, max_value=1e6, allow_nan=False)
event_ids = st.text("abcdef", min_size=1, max_size=3)
watch = st.builds(
    WatchEvent,
    event_id=event_ids,
    user_id=st.just(1),
    item_id=ids,
    ts=times,
    watch_seconds=st.floats(0, 1e4),
    device=st.sampled_from([None, "web", "tv"]),
)
search = st.builds(
    SearchEvent,
    event_id=event_ids,
    user_id=st.just(1),
    ts=times,
    query=st.text("ab c", max_size=12),
)
impression = st.builds(
    ImpressionEvent,
    event_id=event_ids,
    user_id=st.just(1),
    ts=times,
    items=st.lists(
        st.builds(ShownItem, item_id=st.integers(0, 9), position=st.integers(0, 5)),
        min_size=1,
        max_size=4,
    ),
)
profile = st.builds(
    ProfileEvent,
    user_id=st.just(1),
    ts=times,
    age=st.integers(0, 99) | st.none(),
    event_id=event_ids | st.none(),
)
any_event = st.one_of(watch, search, impression, profile)
positions = (
    st.builds(
        Position,
        topic=st.sampled_from(["w", "s"]),
        partition=st.integers(0, 1),
        offset=st.integers(0, 50),
    )
    | st.none()
)


@st.composite
def states(draw: st.DrawFn) -> UserState:
    """Any state reachable by applying events (with or without positions)."""
    s = UserState(user_id=1)
    for ev, pos in draw(st.lists(st.tuples(any_event, positions), max_size=12)):
        s = apply(s, ev, pos, LIMITS)
    return s


@settings(max_examples=300, deadline=None)
@given(states(), any_event, positions)
def test_applying_an_event_twice_equals_once(state: UserState, event, pos) -> None:
    once = apply(state, event, pos, LIMITS)
    assert apply(once, event, pos, LIMITS) == once


@settings(max_examples=200, deadline=None)
@given(states())
def test_codec_round_trip(state: UserState) -> None:
    assert decode(encode(state)) == state


@settings(max_examples=100, deadline=None)
@given(states(), any_event, positions)
def test_apply_never_mutates_its_input(state: UserState, event, pos) -> None:
    before = encode(state)
    apply(state, event, pos, LIMITS)
    assert encode(state) == before


def test_replayed_offset_is_a_no_op_even_for_a_new_event_id() -> None:
    s = UserState(user_id=1)
    w1 = WatchEvent(event_id="a", user_id=1, item_id=3, ts=10, watch_seconds=5)
    w2 = WatchEvent(event_id="b", user_id=1, item_id=4, ts=11, watch_seconds=5)
    s = apply(s, w1, Position("w", 0, 7), LIMITS)
    s2, outcome = apply_checked(s, w2, Position("w", 0, 7), LIMITS)
    assert outcome == "duplicate" and s2 is s
    s3, outcome = apply_checked(s, w2, Position("w", 0, 8), LIMITS)
    assert outcome == "applied" and [w.item_id for w in s3.history] == [3, 4]


def test_history_is_kept_in_event_time_order_and_bounded() -> None:
    s = UserState(user_id=1)
    for i, ts in enumerate([50, 10, 40, 20, 30, 60, 5]):
        s = apply(
            s,
            WatchEvent(event_id=f"e{i}", user_id=1, item_id=i, ts=ts, watch_seconds=1),
            None,
            LIMITS,
        )
    assert [w.ts for w in s.history] == [20, 30, 40, 50, 60]
    assert s.n_watches == 7 and s.last_watch_ts == 60


def test_impression_counters_count_and_evict_the_oldest() -> None:
    s = UserState(user_id=1)
    for i in range(6):
        items = [ShownItem(item_id=i, position=0), ShownItem(item_id=0, position=1)]
        s = apply(
            s, ImpressionEvent(event_id=f"i{i}", user_id=1, items=items, ts=100 + i), None, LIMITS
        )
    assert len(s.impressions) == LIMITS.impression_items
    assert s.impressions[0].shown == 7  # shown in every event (twice in the first)
    assert s.impressions[0].last_ts == 105
    assert set(s.impressions) == {0, 3, 4, 5}


def test_older_profile_never_overwrites_newer() -> None:
    s = apply(UserState(user_id=1), ProfileEvent(user_id=1, ts=20, age=30), None, LIMITS)
    s2, outcome = apply_checked(s, ProfileEvent(user_id=1, ts=10, age=99), None, LIMITS)
    assert outcome == "stale" and s2.profile is not None and s2.profile.age == 30


def test_tokenize_gives_unigrams_and_bigrams() -> None:
    assert tokenize("Funny CATS, funny!") == ["funny", "cats", "funny", "funny cats", "cats funny"]


def test_incremental_state_equals_recomputation_on_a_seeded_mix() -> None:
    limits = Limits(history_length=10, search_tokens=12, impression_items=200, dedup_window=32)
    events = make_events(seed=7, users=20, n=3000)
    got: dict[int, UserState] = {}
    for _offset, (_, ev) in enumerate(events):
        got[ev.user_id] = apply(got.get(ev.user_id, UserState(ev.user_id)), ev, None, limits)
    assert_states_match(got, recompute(events, limits))
