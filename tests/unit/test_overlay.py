"""The freshness overlay: fold-in, the new-item bookkeeping, and serving a new upload through
the real Recommender without a retrain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.item_table import ItemMeta, ItemTable, StackedItemTable
from serving.overlay import (
    FoldInConfig,
    ItemSpace,
    NewItem,
    OverlayBuilder,
    build_overlay,
    fold_in,
    merge_by_score,
)
from stream.contract import EventRules
from stream.events import EventKind, FreshWatch, RecommendationRequest, UploadEvent, WatchEvent
from stream.fresh_items import FreshItems
from stream.ingest import Consumed, process_batch
from stream.state import Limits, Position, UserState, Watch
from tests.snapshotkit import train_small_pair

# four snapshot items on two axes; channel "a" holds 1 and 2, channel "b" holds 3 and 4
IDS = np.array([1, 2, 3, 4])
VECS = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=np.float32)
META = {
    1: ItemMeta(channel="a", topic="x"),
    2: ItemMeta(channel="a", topic="x"),
    3: ItemMeta(channel="b", topic="y"),
    4: ItemMeta(channel="b", topic="y"),
}
SPACE = ItemSpace.of(IDS, VECS, META)


def test_watchers_fold_in_along_what_they_watched_at_its_norm() -> None:
    new = NewItem(ItemMeta(upload_ts=5.0), [(3, 4), (4,), (999,)])  # 999: unknown, ignored
    vec = fold_in(new, SPACE, FoldInConfig(prior_weight=0.0, boost=1.0))
    assert vec is not None
    assert vec[0] == pytest.approx(0.0) and vec[1] > 0
    # the mean norm of what was averaged: watcher 1 (1+3)/2 = 2, watcher 2: 3 -> 2.5
    assert float(np.linalg.norm(vec)) == pytest.approx(2.5)
    boosted = fold_in(new, SPACE, FoldInConfig(prior_weight=0.0, boost=4.0))
    assert float(np.linalg.norm(boosted)) == pytest.approx(10.0)


def test_watchers_as_users_point_the_item_at_who_watches_it_next() -> None:
    """With the snapshot's user tower (``embed``), a watcher contributes its user vector: the
    item then scores high for users like its watchers, whatever their history's own items
    score (a softmax model scores what a user already watched low)."""
    seen: list[tuple[int, ...]] = []

    def embed(contexts):
        seen.extend(contexts)
        return np.array([[0.0, -1.0] if 3 in c else [-1.0, 0.0] for c in contexts])

    space = ItemSpace.of(IDS, VECS, META, embed)
    vec = fold_in(
        NewItem(ItemMeta(), [(1, 3), (3,), (2,)]),
        space,
        FoldInConfig(prior_weight=0.0, boost=2.0, context=1),
    )
    assert seen == [(3,), (3,), (2,)]  # the last ``context`` items of each watcher
    assert vec is not None and vec[1] < vec[0] < 0  # two watchers one way, one the other
    assert float(np.linalg.norm(vec)) == pytest.approx(2.0 * float(np.mean([2, 4, 1, 3])))
    as_items = fold_in(
        NewItem(ItemMeta(), [(3,)]), space, FoldInConfig(prior_weight=0.0, watchers="items")
    )
    assert as_items is not None and as_items[1] > 0  # the items' own direction


def test_the_channel_prior_backs_off_and_weighs_like_watchers() -> None:
    prior_only = fold_in(NewItem(ItemMeta(channel="a")), SPACE, FoldInConfig(boost=1.0))
    assert prior_only is not None and prior_only[1] == pytest.approx(0.0)
    assert float(np.linalg.norm(prior_only)) == pytest.approx(3.0)  # channel a: norms 2, 4
    topic_only = fold_in(NewItem(ItemMeta(topic="y")), SPACE, FoldInConfig(boost=1.0))
    assert topic_only is not None and topic_only[0] == pytest.approx(0.0)
    # one watcher of channel b's items against the prior of channel a with λ = 1: halfway
    mixed = fold_in(
        NewItem(ItemMeta(channel="a"), [(4,)]), SPACE, FoldInConfig(prior_weight=1.0, boost=1.0)
    )
    assert mixed is not None and mixed[0] == pytest.approx(mixed[1])  # equal weights: halfway
    assert fold_in(NewItem(ItemMeta(channel="zzz")), SPACE, FoldInConfig()) is None


def test_the_overlay_holds_only_new_items_with_evidence_and_rebuilds_what_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = {
        2: NewItem(ItemMeta(channel="a"), [(1,)]),  # the snapshot holds it: dropped
        10: NewItem(ItemMeta(channel="a", upload_ts=50.0, duration=600.0)),
        11: NewItem(ItemMeta(upload_ts=51.0), [(3,)]),
        12: NewItem(ItemMeta(upload_ts=52.0)),  # no channel, no watcher: no vector yet
    }
    table = ItemTable(META)
    builder = OverlayBuilder(SPACE, table, FoldInConfig())
    overlay = builder.build(items)
    assert overlay.ids.tolist() == [10, 11] and overlay.watched == 1
    assert isinstance(overlay.table, StackedItemTable)
    cols = overlay.table.columns(np.array([1, 10, 77]))
    assert cols.upload_ts.tolist() == [np.inf, 50.0, np.inf]
    assert cols.duration.tolist()[1] == 600.0
    assert cols.channel[1] == cols.channel[0] == table.channel_codes["a"]  # one code space
    calls = []
    import serving.overlay as module

    real = module.fold_in
    monkeypatch.setattr(module, "fold_in", lambda *a: calls.append(a[0]) or real(*a))
    items[11] = NewItem(ItemMeta(upload_ts=51.0), [(3,), (4,)])  # a second watcher
    again = builder.build(items)
    assert [c.contexts for c in calls] == [[(3,), (4,)]]  # only item 11, whose evidence changed
    assert again.ids.tolist() == [10, 11]


def test_search_excludes_and_merges_by_score() -> None:
    overlay = build_overlay(
        SPACE,
        ItemTable(META),
        {10: NewItem(ItemMeta(), [(1,)]), 11: NewItem(ItemMeta(), [(3,)])},
        FoldInConfig(prior_weight=0.0, boost=1.0),
    )
    u = np.array([[1.0, 0.1], [1.0, 0.1]], dtype=np.float32)
    found = overlay.search(u, 5, [np.zeros(0, np.int64), np.array([10])])
    assert found[0][0].tolist() == [10, 11] and found[1][0].tolist() == [11]
    ids, scores = merge_by_score(np.array([2, 1]), np.array([4.0, 2.0], np.float32), *found[0], k=3)
    assert ids.tolist() == [2, 1, 10] and scores.tolist() == [4.0, 2.0, 2.0]  # ties: main first


def test_fresh_items_keep_first_watchers_newest_uploads_and_forget_what_is_held() -> None:
    fresh = FreshItems(max_items=4, max_watchers=2)
    up = UploadEvent(item_id=7, ts=100.0, duration_seconds=60.0, channel="a")
    assert fresh.upload(up) and not fresh.upload(up.model_copy(update={"ts": 99.0}))
    w = FreshWatch(item_id=7, user_id=1, ts=101.0, context=[1, 2])
    assert fresh.watch(w) and not fresh.watch(w)  # a replayed record changes nothing
    assert fresh.watch(w.model_copy(update={"user_id": 2}))
    assert not fresh.watch(w.model_copy(update={"user_id": 3}))  # past the first two
    assert fresh.watch(FreshWatch(item_id=8, user_id=1, ts=1.0))  # before its upload: kept
    assert set(fresh.items()) == {7}  # only uploads known are served
    assert fresh.items()[7].contexts == [(1, 2), (1, 2)]
    for item in (20, 21, 22):
        fresh.upload(UploadEvent(item_id=item, ts=200.0 + item, duration_seconds=60.0))
    # over the bound (4): a quarter dropped, the one without an upload first, then the oldest
    assert len(fresh) == 3 and set(fresh.items()) == {20, 21, 22}
    assert fresh.forget(lambda i: i == 20) == 1 and set(fresh.items()) == {21, 22}


RULES = EventRules(max_bytes=4096, max_future_skew_s=60, check_future=False)


def test_applied_watches_of_new_items_are_published_with_the_watchers_context() -> None:
    state = UserState(user_id=5, history=(Watch(1.0, 3, 60.0), Watch(2.0, 4, 60.0)))
    watches = [
        WatchEvent(event_id=f"w{i}", user_id=5, item_id=item, ts=10.0 + i, watch_seconds=30.0)
        for i, item in enumerate([3, 900, 900])
    ]
    items = [
        Consumed(EventKind.WATCH, b"5", w.to_json(), Position("t.watch", 0, n))
        for n, w in enumerate(watches)
    ]
    items.append(Consumed(EventKind.WATCH, b"5", watches[1].to_json(), Position("t.watch", 0, 1)))
    result = process_batch(
        items,
        lambda uid, _i: state,
        limits=Limits(),
        rules=RULES,
        now=100.0,
        is_new=lambda item: item == 900,
    )
    # the held item 3 and the replayed offset 1 publish nothing; the second watch of 900
    # (another event id) does, with the history as it was before it
    assert [(i, f.item_id) for i, f in result.fresh] == [(1, 900), (2, 900)]
    assert result.fresh[0][1].context == [3, 4, 3]
    assert result.fresh[1][1].context == [3, 4, 3, 900]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    from serving.recommend import Recommender, ServingModels

    pair = train_small_pair(tmp_path_factory.mktemp("overlay"), seed=9)
    return Recommender(ServingModels.load(*pair), retrieve=20, retrieve_i2i=0)


def test_a_new_upload_is_served_before_any_retrain(served, tmp_path: Path) -> None:
    """Users who watched what its first watchers watched get it, ranked, with its duration."""
    rec = served
    known = np.asarray(rec.models.candidates.items.ids)
    history = tuple(Watch(100.0 + n, int(i), 300.0) for n, i in enumerate(known[:6]))
    user = UserState(user_id=77, history=history, watched=tuple(int(i) for i in known[:6]))
    request = RecommendationRequest(request_id="r", user_id=77, k=20)
    before = rec.recommend(user, request, now=1000.0)
    assert 5000 not in [it.item_id for it in before.items]
    new = NewItem(
        ItemMeta(upload_ts=900.0, duration=120.0),
        [tuple(int(i) for i in known[:6])] * 5,  # five watchers with this user's history
    )
    overlay = rec.update_overlay({5000: new}, FoldInConfig(boost=8.0))
    assert overlay.ids.tolist() == [5000]
    after = rec.recommend(user, request, now=1000.0)
    shown = {it.item_id: it for it in after.items}
    assert 5000 in shown
    assert shown[5000].expected_watch_seconds <= 120.0  # capped at its upload's duration
    # one who watched it is not offered it again
    seen = UserState(user_id=78, history=(*history, Watch(950.0, 5000, 60.0)))
    again = rec.recommend(seen, request.model_copy(update={"user_id": 78}), now=1000.0)
    assert 5000 not in [it.item_id for it in again.items]
