"""Unit tests of the pure user-state transition (no broker)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events import ImpressionEvent, ProfileEvent, SearchEvent, ShownItem, WatchEvent
from stream.state import (
    ABOVE_FLOOR_MAX,
    Limits,
    Position,
    UserState,
    apply,
    apply_checked,
    decode,
    encode,
    tokenize,
    was_applied,
)
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


def test_watched_items_are_distinct_bounded_and_outlive_the_rolling_history() -> None:
    limits = Limits(history_length=2, watched_items=4)
    s = UserState(user_id=1)
    for i, item in enumerate([7, 8, 7, 9, 10, 11]):
        ev = WatchEvent(event_id=f"w{i}", user_id=1, item_id=item, ts=float(i), watch_seconds=1)
        s = apply(s, ev, None, limits)
        if i == 3:
            # a re-watch moves the item to the newest end instead of counting it twice
            assert s.watched == (8, 7, 9) and [w.item_id for w in s.history] == [7, 9]
    assert s.watched == (7, 9, 10, 11)  # the oldest distinct item (8) left first
    assert decode(encode(s)).watched == s.watched


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


def test_a_duplicate_is_caught_however_far_other_topics_ran_ahead() -> None:
    """A restarted worker read a search partition 40 watches of one user behind the watch
    topic: the duplicate search at the next offset must still be recognised."""
    search = SearchEvent(event_id="s-1", user_id=1, query="cooking war", ts=10.0)
    state = apply(UserState(user_id=1), search, Position("search", 0, 180), LIMITS)
    for i in range(5 * LIMITS.dedup_window):
        watch = WatchEvent(event_id=f"w-{i}", user_id=1, item_id=i, watch_seconds=5.0, ts=11.0 + i)
        state = apply(state, watch, Position("watch", 0, i), LIMITS)
    again, outcome = apply_checked(state, search, Position("search", 0, 181), LIMITS)
    assert outcome == "duplicate" and again.n_searches == 1
    kinds = again.recent_event_kinds
    assert kinds.count("w") == LIMITS.dedup_window and kinds.count("s") == 1
    assert len(again.recent_event_ids) == len(kinds)


def test_ids_of_a_state_written_without_kinds_age_out_first() -> None:
    old = UserState(
        user_id=1, recent_event_ids=tuple(f"old-{i}" for i in range(LIMITS.dedup_window))
    )
    state = old
    for i in range(3):
        watch = WatchEvent(event_id=f"w-{i}", user_id=1, item_id=i, watch_seconds=5.0, ts=1.0 + i)
        state = apply(state, watch, Position("watch", 0, i), LIMITS)
    ids = state.recent_event_ids
    assert len(ids) == LIMITS.dedup_window and ids[:3] == ("old-3", "old-4", "old-5")
    assert ids[-3:] == ("w-0", "w-1", "w-2") and state.recent_event_kinds == "www"
    assert (
        apply_checked(
            state, SearchEvent(event_id="old-7", user_id=1, query="x", ts=5.0), None, LIMITS
        )[1]
        == "duplicate"
    )


def _watch(i: int, ts: float | None = None) -> WatchEvent:
    return WatchEvent(
        event_id=f"w-{i}",
        user_id=1,
        item_id=i,
        watch_seconds=5.0,
        ts=100.0 + i if ts is None else ts,
    )


def test_a_record_read_again_after_later_ones_is_applied_not_taken_for_a_replay() -> None:
    """A fetch skipped offset 5; 6 and 7 were applied; the partition was rewound to 5. The
    last-offset rule took 5 for a replay (5 <= 7) and lost it."""
    state = UserState(user_id=1)
    for offset in (6, 7, 5):
        state, outcome = apply_checked(state, _watch(offset), Position("w", 0, offset), LIMITS)
        assert outcome == "applied"
    assert state.n_watches == 3 and [w.item_id for w in state.history] == [5, 6, 7]
    for offset in (5, 6, 7):  # then the rewind reads 6 and 7 again: replays
        assert apply_checked(state, _watch(offset), Position("w", 0, offset), LIMITS)[1] == (
            "duplicate"
        )


def test_the_floor_follows_the_commit_so_few_offsets_are_kept() -> None:
    state = UserState(user_id=1)
    for offset in range(0, 200, 2):  # every other offset is this user's; the commit lags by 6
        state = apply(state, _watch(offset), Position("w", 0, offset), LIMITS, committed=offset - 6)
    assert state.applied["w/0"] == 198 - 7 and state.applied_above["w/0"] == (192, 194, 196, 198)
    assert was_applied(state, Position("w", 0, 150)) and was_applied(state, Position("w", 0, 196))
    assert not was_applied(state, Position("w", 0, 193)) and not was_applied(
        state, Position("w", 0, 199)
    )
    assert not was_applied(state, Position("w", 1, 10))  # another partition


def test_without_commits_the_set_is_bounded_and_the_floor_rises_to_it() -> None:
    state = UserState(user_id=1)
    n = ABOVE_FLOOR_MAX + 10
    for offset in range(n):
        state = apply(state, _watch(offset), Position("w", 0, offset), LIMITS)
    assert len(state.applied_above["w/0"]) == ABOVE_FLOOR_MAX
    assert state.applied["w/0"] == n - ABOVE_FLOOR_MAX - 1
    assert all(was_applied(state, Position("w", 0, o)) for o in range(n))


def test_a_state_with_only_a_floor_keeps_its_meaning() -> None:
    """Values written before the set existed hold the last offset applied as the floor."""
    old = UserState(user_id=1, applied={"w/0": 10}, search_tokens=("old",))
    assert apply_checked(old, _watch(9), Position("w", 0, 9), LIMITS)[1] == "duplicate"
    new = apply(
        old,
        SearchEvent(event_id="s", user_id=1, query="late", ts=1.0),
        Position("w", 0, 12),
        LIMITS,
    )
    assert new.search_tokens == ("old", "late") and new.applied_above == {"w/0": (12,)}


def test_search_tokens_are_kept_in_event_time_order() -> None:
    def search(i: int, query: str, ts: float) -> SearchEvent:
        return SearchEvent(event_id=f"s-{i}", user_id=1, query=query, ts=ts)

    state = UserState(user_id=1)
    for i, (query, ts) in enumerate([("a", 1.0), ("c", 3.0), ("b", 2.0), ("d", 3.0)]):
        state = apply(state, search(i, query, ts), Position("s", 0, i), LIMITS)
    assert state.search_tokens == ("a", "b", "c", "d")  # b late; d ties c and comes after it
    assert state.search_ts == (1.0, 2.0, 3.0, 3.0)
    for i in range(4, 10):
        state = apply(state, search(i, f"x{i}", 10.0 + i), Position("s", 0, i), LIMITS)
    assert len(state.search_tokens) == len(state.search_ts) == LIMITS.search_tokens


distinct_events = st.lists(st.one_of(watch, search, impression), min_size=1, max_size=10)


@settings(max_examples=200, deadline=None)
@given(distinct_events, st.randoms(use_true_random=False), st.integers(0, 10))
def test_any_delivery_order_then_a_replay_counts_each_record_once(events, rnd, commit) -> None:
    """Records of one partition reach the state in any order (a rewind to a skipped record),
    then the whole partition is read again from a commit: each counts exactly once."""
    events = [e.model_copy(update={"event_id": f"{i}"}) for i, e in enumerate(events)]
    order = list(range(len(events)))
    rnd.shuffle(order)
    state = UserState(user_id=1)
    for i in order:
        state = apply(state, events[i], Position("p", 0, i), LIMITS)
    for i in range(min(commit, len(events)), len(events)):
        state = apply(state, events[i], Position("p", 0, i), LIMITS, committed=commit)
    kinds = [type(e) for e in events]
    assert state.n_watches == kinds.count(WatchEvent)
    assert state.n_searches == kinds.count(SearchEvent)
    assert state.n_impressions == kinds.count(ImpressionEvent)
