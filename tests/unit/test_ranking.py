"""Ranking (paper §4): features, normalization, weighted LR, metrics, snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.evaluate_ranking import auc, ranking_metrics, split_scores, weighted_pair_loss
from model.ranker_snapshot import export_ranker, load_ranker
from model.ranking_data import Page, PageSet, pages_from_events
from model.ranking_encoding import QuantileNormalizer, embedding_dim
from model.ranking_features import CONTINUOUS, Candidate, ItemMeta, impression_features
from model.snapshot import SnapshotError
from model.train_ranker import RankerTrainConfig, fit_ranker
from stream.events import EventKind, ImpressionEvent, ShownItem, WatchEvent
from stream.state import Limits, UserState, apply, decode, encode

ITEMS = {
    1: ItemMeta(channel="c1", topic="cats", upload_ts=0.0),
    2: ItemMeta(channel="c1", topic="cats", upload_ts=50.0),
    3: ItemMeta(channel="c2", topic="dogs", upload_ts=90.0),
}


def _col(name: str) -> int:
    return CONTINUOUS.index(name)


def _state(events: list) -> UserState:
    s = UserState(user_id=7)
    for e in events:
        s = apply(s, e, None, Limits())
    return s


def test_features_count_previous_impressions_and_user_item_history() -> None:
    events = [
        WatchEvent(event_id="w1", user_id=7, item_id=1, ts=100.0, watch_seconds=30.0),
        ImpressionEvent(
            event_id="i1", user_id=7, items=[ShownItem(item_id=3, position=0)], ts=110.0
        ),
        ImpressionEvent(
            event_id="i2", user_id=7, items=[ShownItem(item_id=3, position=1)], ts=150.0
        ),
    ]
    st = _state(events)
    f = impression_features(st, [Candidate(2, "ann", 0.5), Candidate(3, "ann", 0.1)], ITEMS, 200.0)
    two, three = f.continuous
    assert three[_col("prev_impressions")] == 2 and three[_col("since_last_impression")] == 50.0
    assert two[_col("prev_impressions")] == 0 and np.isinf(two[_col("since_last_impression")])
    assert two[_col("channel_watches")] == 1 and three[_col("channel_watches")] == 0
    assert two[_col("since_topic_watch")] == 100.0 and np.isinf(three[_col("since_topic_watch")])
    assert two[_col("since_last_watch")] == 100.0 and two[_col("item_age")] == 150.0
    assert two[_col("source_score")] == 0.5 and f.categorical["source"][0] == "ann"
    assert f.history == [1]


def test_features_never_use_anything_at_or_after_the_impression() -> None:
    st = _state([WatchEvent(event_id="w", user_id=7, item_id=1, ts=300.0, watch_seconds=1.0)])
    f = impression_features(st, [Candidate(2, "ann", 0.0)], ITEMS, 300.0)
    assert f.history == [] and np.isinf(f.continuous[0][_col("since_last_watch")])
    assert f.continuous[0][_col("channel_watches")] == 0


def test_training_and_serving_compute_the_same_features() -> None:
    """pages_from_events (training) vs the worker's path: the stored RocksDB value, decoded."""
    rng = np.random.default_rng(0)
    events: list = []
    t = 1000.0
    for k in range(30):
        t += float(rng.uniform(1, 100))
        shown = [int(i) for i in rng.choice([1, 2, 3], size=2, replace=False)]
        events.append(
            (
                EventKind.IMPRESSION,
                ImpressionEvent(
                    event_id=f"i{k}",
                    user_id=7,
                    request_id=f"r{k}",
                    items=[
                        ShownItem(item_id=i, position=p, source="ann", score=0.1 * p)
                        for p, i in enumerate(shown)
                    ],
                    ts=t,
                ),
            )
        )
        if rng.random() < 0.5:
            events.append(
                (
                    EventKind.WATCH,
                    WatchEvent(
                        event_id=f"w{k}",
                        user_id=7,
                        item_id=shown[0],
                        ts=t + 1,
                        watch_seconds=60.0,
                        request_id=f"r{k}",
                    ),
                )
            )
            t += 1
    pages = list(pages_from_events(events, ITEMS, Limits()))
    assert len(pages) == 30
    served = None
    k = 0
    for _kind, e in events:
        if isinstance(e, ImpressionEvent):
            stored = decode(encode(served)) if served is not None else None  # the RocksDB value
            cands = [Candidate(s.item_id, s.source or "unknown", s.score or 0.0) for s in e.items]
            f = impression_features(stored, cands, ITEMS, e.ts)
            np.testing.assert_array_equal(f.continuous, pages[k].features.continuous)
            assert f.history == pages[k].features.history
            assert f.categorical == pages[k].features.categorical
            k += 1
        served = apply(served or UserState(user_id=7), e, None, Limits())
    clicked = [p.clicked[0] for p in pages]
    assert any(clicked) and not all(clicked)


def test_quantile_normalization_is_a_cdf() -> None:
    rng = np.random.default_rng(1)
    x = np.c_[rng.exponential(100, 5000), np.r_[np.zeros(4000), rng.uniform(1, 5, 1000)]]
    q = QuantileNormalizer.fit(x)
    z = q.transform(np.r_[x, [[np.inf, np.inf]]])
    assert ((z >= 0) & (z <= 1)).all() and (z[-1] == 1.0).all()
    assert abs(np.median(z[:-1, 0]) - 0.5) < 0.02  # uniform on the training distribution
    order = np.argsort(x[:, 0])
    assert (np.diff(z[order, 0]) >= 0).all()  # monotone
    assert abs(z[0, 1] - 0.4) < 0.02  # the point mass at 0 sits mid-way through its 80%
    assert embedding_dim(3) < embedding_dim(2000) <= embedding_dim(10**6) == 64


def _known_world(n_pages: int, seed: int) -> tuple[PageSet, dict[int, float]]:
    """Pages over 6 items with known click probability and watch time → known E[T]."""
    rng = np.random.default_rng(seed)
    p_click = {1: 0.02, 2: 0.05, 3: 0.10, 4: 0.10, 5: 0.20, 6: 0.04}
    mean_t = {1: 900.0, 2: 300.0, 3: 60.0, 4: 600.0, 5: 120.0, 6: 1500.0}
    pages = []
    for k in range(n_pages):
        shown = [int(i) for i in rng.choice(list(p_click), size=4, replace=False)]
        f = impression_features(None, [Candidate(i, "s", 0.0) for i in shown], {}, float(k))
        clicked = np.array([rng.random() < p_click[i] for i in shown])
        secs = np.where(clicked, [rng.exponential(mean_t[i]) for i in shown], 0.0)
        pages.append(Page(0, float(k), f, clicked, secs))
    return PageSet(pages), {i: p_click[i] * mean_t[i] for i in p_click}


def test_weighted_lr_odds_track_expected_watch_time() -> None:
    train, truth = _known_world(6000, seed=2)
    tr = fit_ranker(train, RankerTrainConfig(hidden=(), epochs=6, lr=0.05, seed=0))
    pred = {}
    for i in truth:
        f = impression_features(None, [Candidate(i, "s", 0.0)], {}, 0.0)
        pred[i] = float(tr.expected_watch_seconds([f])[0])
    p, t = np.array([pred[i] for i in truth]), np.array(list(truth.values()))
    assert np.corrcoef(np.log(p), np.log(t))[0, 1] > 0.95
    assert np.all(np.abs(np.log(p / t)) < np.log(1.6))  # within 60% per item (sampling noise)
    # the unweighted model ranks by click rate instead: item 5 (CTR 0.2, 24 s) above item 6
    # (CTR 0.04, 60 s), the wrong order for watch time
    unw = fit_ranker(train, RankerTrainConfig(hidden=(), epochs=6, lr=0.05, weighted=False))
    f5, f6 = (impression_features(None, [Candidate(i, "s", 0.0)], {}, 0.0) for i in (5, 6))
    assert unw.logits([f5])[0] > unw.logits([f6])[0]
    assert tr.logits([f5])[0] < tr.logits([f6])[0]
    test, _ = _known_world(2000, seed=3)
    w_loss = weighted_pair_loss(
        test.pages, split_scores(test.pages, tr.logits([p.features for p in test.pages]))
    )
    u_loss = weighted_pair_loss(
        test.pages, split_scores(test.pages, unw.logits([p.features for p in test.pages]))
    )
    assert w_loss < u_loss


def test_pair_loss_auc_and_ndcg_by_hand() -> None:
    f = impression_features(None, [Candidate(i, "s", 0.0) for i in (1, 2, 3)], {}, 0.0)
    page = Page(0, 0.0, f, np.array([True, False, True]), np.array([10.0, 0.0, 30.0]))
    scores = [np.array([0.1, 0.5, 0.9])]  # the 10 s positive loses to the negative
    assert weighted_pair_loss([page], scores) == pytest.approx(10.0 / 40.0)
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.5])) == pytest.approx(0.75)
    m = ranking_metrics([page], [np.array([0.9, 0.1, 0.5])])
    ideal = 30 + 10 / np.log2(3)
    assert m["ndcg10"] == pytest.approx((10 + 30 / np.log2(3)) / ideal)


def test_ranker_snapshot_round_trip_and_refusal(tmp_path: Path) -> None:
    train, _ = _known_world(500, seed=4)
    tr = fit_ranker(train, RankerTrainConfig(hidden=(16,), epochs=1))
    path = export_ranker(tr, tmp_path, {"weighted_loss": 0.3}, version="r1")
    loaded, snap = load_ranker(path)
    raws = [p.features for p in train.pages[:20]]
    np.testing.assert_array_equal(tr.logits(raws), loaded.logits(raws))
    assert loaded.scale == tr.scale and snap.meta["metrics"]["weighted_loss"] == 0.3
    weights = next(path.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(SnapshotError):
        load_ranker(path)


def _reference_row(st: UserState, c: Candidate, items: dict, now: float) -> list[float]:
    """The per-candidate definition of features 0-8, written out as loops."""
    inf = float("inf")
    hist = [w for w in st.history if w.ts < now]
    meta = items.get(c.item_id) or ItemMeta()
    k = st.impressions.get(c.item_id)
    seen = k is not None and k.last_ts < now
    same_channel = [
        w for w in hist if meta.channel and items.get(w.item_id, ItemMeta()).channel == meta.channel
    ]
    same_topic = [
        w.ts for w in hist if meta.topic and items.get(w.item_id, ItemMeta()).topic == meta.topic
    ]
    return [
        now - max(w.ts for w in hist) if hist else inf,
        k.shown if seen else 0.0,
        now - k.last_ts if seen else inf,
        float(len(same_channel)),
        now - max(same_topic) if same_topic else inf,
        max(now - meta.upload_ts, 0.0) if meta.upload_ts is not None else inf,
        meta.duration if meta.duration is not None else inf,
        c.score,
        inf,
    ]


def test_column_wise_features_match_the_per_candidate_definition() -> None:
    """The serving path (an ItemTable, candidate columns) and the training path (a mapping,
    Candidate records) give the rows the loops above define, on a random user and catalogue
    (unknown items, items without channel or topic, ties in time, impressions after ``now``)."""
    from model.item_table import ItemTable
    from model.ranking_features import CandidateColumns

    rng = np.random.default_rng(4)
    items = {
        i: ItemMeta(
            channel=None if i % 7 == 0 else f"c{i % 5}",
            topic=None if i % 11 == 0 else f"t{i % 4}",
            upload_ts=None if i % 13 == 0 else float(rng.integers(0, 500)),
            duration=None if i % 3 == 0 else float(rng.integers(60, 600)),
        )
        for i in range(1, 80)
    }
    events: list = []
    for n in range(60):
        ts = float(rng.integers(0, 1000))
        item = int(rng.integers(1, 100))  # some ids outside the catalogue
        if rng.random() < 0.6:
            events.append(
                WatchEvent(event_id=f"w{n}", user_id=7, item_id=item, ts=ts, watch_seconds=5.0)
            )
        else:
            shown = [ShownItem(item_id=item, position=0)]
            events.append(ImpressionEvent(event_id=f"i{n}", user_id=7, items=shown, ts=ts))
    st = _state(sorted(events, key=lambda e: e.ts))
    now = 700.0
    cands = [
        Candidate(int(i), "candidates", float(rng.normal())) for i in rng.permutation(99)[:40] + 1
    ]
    want = np.array([_reference_row(st, c, items, now) for c in cands])
    from_mapping = impression_features(st, cands, items, now)
    cols = CandidateColumns.of(cands)
    from_table = impression_features(st, cols, ItemTable(items), now)
    for f in (from_mapping, from_table):
        np.testing.assert_array_equal(f.continuous[:, :9], want)
        assert f.items == [c.item_id for c in cands]
    assert from_mapping.history == from_table.history
    newest = sorted((w for w in st.history if w.ts < now), key=lambda w: w.ts, reverse=True)
    assert from_table.history == [w.item_id for w in newest][:20]
