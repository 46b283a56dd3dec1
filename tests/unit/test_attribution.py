"""Online attribution: pages remembered per user with their model versions; a watch carrying a
page's request id is credited to that page's versions, once; version series stay bounded."""

from __future__ import annotations

from prometheus_client import REGISTRY

from stream.attribution import AttributionMetrics
from stream.contract import EventRules
from stream.events import EventKind, ImpressionEvent, ShownItem, WatchEvent
from stream.ingest import Consumed, process_batch
from stream.state import Limits, Position, UserState, apply, credited_page

RULES = EventRules(max_bytes=4096, max_future_skew_s=60, check_future=False)
A = {"candidates": "c-a", "ranker": "r-a"}
B = {"candidates": "c-b", "ranker": "r-b"}


def page(request_id: str, items: list[int], ts: float, versions: dict | None) -> ImpressionEvent:
    return ImpressionEvent(
        event_id=f"imp-{request_id}",
        user_id=7,
        request_id=request_id,
        items=[ShownItem(item_id=i, position=p) for p, i in enumerate(items)],
        ts=ts,
        model_versions=versions,
    )


def watch(n: int, item: int, request_id: str | None, seconds: float = 60.0) -> WatchEvent:
    return WatchEvent(
        event_id=f"w{n}",
        user_id=7,
        item_id=item,
        ts=2000.0 + n,
        watch_seconds=seconds,
        request_id=request_id,
    )


def test_pages_are_remembered_bounded_and_in_time_order() -> None:
    limits = Limits(attribution_pages=3, attribution_items=2)
    state = UserState(user_id=7)
    for n, ts in enumerate([10.0, 30.0, 20.0, 40.0]):
        state = apply(state, page(f"r{n}", [1, 2, 3], ts, A), None, limits)
    assert [p.request_id for p in state.served] == ["r2", "r1", "r3"]  # r0 (oldest) dropped
    assert state.served[0].items == (1, 2)  # the top attribution_items of the page
    # a page without versions (an external producer's impression) or request id: not kept
    bare = apply(state, page("r9", [5], 50.0, None), None, limits)
    assert bare.served == state.served and bare.n_impressions == state.n_impressions + 1
    off = apply(UserState(user_id=7), page("r1", [1], 1.0, A), None, Limits(attribution_pages=0))
    assert off.served == ()


def test_a_watch_is_credited_only_to_the_page_of_its_request_that_showed_it() -> None:
    state = apply(UserState(user_id=7), page("ra", [1, 2], 10.0, A), None, Limits())
    state = apply(state, page("rb", [3, 4], 11.0, B), None, Limits())
    assert credited_page(state, watch(1, 3, "rb")).candidates == "c-b"
    assert credited_page(state, watch(2, 1, "ra")).ranker == "r-a"
    assert credited_page(state, watch(3, 3, "ra")) is None  # not on that page
    assert credited_page(state, watch(4, 3, None)) is None  # no request id
    assert credited_page(state, watch(5, 3, "unknown")) is None


def _consumed(offset: int, kind: EventKind, record: object) -> Consumed:
    return Consumed(kind, b"7", record.to_json(), Position(f"t.{kind.value}", 0, offset))


def test_the_batch_counts_applied_credited_watches_once() -> None:
    store: dict[int, UserState] = {}
    items = [
        _consumed(0, EventKind.IMPRESSION, page("ra", [1, 2], 10.0, A)),
        _consumed(1, EventKind.IMPRESSION, page("rb", [3], 11.0, B)),
        _consumed(0, EventKind.WATCH, watch(1, 1, "ra", 100.0)),
        _consumed(1, EventKind.WATCH, watch(2, 2, "ra", 50.0)),
        _consumed(2, EventKind.WATCH, watch(3, 3, "rb", 30.0)),
        _consumed(3, EventKind.WATCH, watch(4, 4, "rb", 30.0)),  # not shown on rb
        _consumed(2, EventKind.WATCH, watch(3, 3, "rb", 30.0)),  # offset 2 again: duplicate
    ]
    result = process_batch(
        items, lambda uid, _i: store.get(uid), limits=Limits(), rules=RULES, now=3000.0
    )
    assert dict(result.attributed) == {("c-a", "r-a"): 2, ("c-b", "r-b"): 1}
    assert dict(result.attributed_seconds) == {("c-a", "r-a"): 150.0, ("c-b", "r-b"): 30.0}
    # the same watches replayed against the stored state: duplicates, credited no more
    store[7] = result.writes[7][0]
    again = process_batch(
        items[2:], lambda uid, _i: store.get(uid), limits=Limits(), rules=RULES, now=3000.0
    )
    assert not again.attributed


def _sample(name: str, versions: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, versions)


def test_counters_by_version_and_only_the_recent_pairs_are_exported() -> None:
    counters = AttributionMetrics(keep=2)
    x = {"candidates": "lru-x", "ranker": "lru-x"}
    y = {"candidates": "lru-y", "ranker": "lru-y"}
    z = {"candidates": "lru-z", "ranker": "lru-z"}
    counters.shown(x, 10)
    counters.shown(y, 5)
    counters.attributed({("lru-x", "lru-x"): 2}, {("lru-x", "lru-x"): 120.0})
    assert _sample("watchnext_shown_total", x) == 10
    assert _sample("watchnext_attributed_watches_total", x) == 2
    assert _sample("watchnext_attributed_watch_seconds_total", x) == 120.0
    counters.shown(z, 1)  # three pairs, keep 2: y is the least recently used
    assert _sample("watchnext_shown_total", y) is None
    assert _sample("watchnext_shown_total", x) == 10
    assert _sample("watchnext_shown_total", z) == 1
