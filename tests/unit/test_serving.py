"""Serving core: ANN recall against exact search, and the pure request path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.index import IndexConfig, ItemIndex
from serving.recommend import Recommender, ServingModels, latest_snapshots
from stream.events import ProfileEvent, RecommendationRequest, WatchEvent
from stream.state import Limits, UserState, apply
from tests.mldata import write_ratings_csv
from watchnext.train import run_train


def _clustered(n: int, dim: int, topics: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors around topic centroids (the shape trained item tables have) and queries."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(topics, dim)).astype(np.float32)
    vectors = centroids[rng.integers(0, topics, n)] + 0.7 * rng.normal(size=(n, dim))
    queries = centroids[rng.integers(0, topics, 50)] + rng.normal(size=(50, dim))
    return vectors.astype(np.float32), queries.astype(np.float32)


def test_ivf_recall_at_100_against_exact_and_survives_serialization() -> None:
    vectors, queries = _clustered(20_000, 32, 200, seed=0)
    ids = np.arange(100, 20_100)
    exact = ItemIndex(vectors, ids)
    approx = ItemIndex(vectors, ids, IndexConfig(exact_max_items=1000))
    assert exact.exact and not approx.exact
    truth, _ = exact.search(queries, 100)
    got, scores = approx.search(queries, 100)
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(truth, got, strict=True)])
    assert recall >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # best first
    assert set(got.ravel()) <= set(ids)
    # a fewer-probes config is worse: nprobe is what the recall comes from
    coarse = ItemIndex.from_bytes(approx.to_bytes(), ids, IndexConfig(nprobe=1))
    got1, _ = coarse.search(queries, 100)
    assert np.mean([len(set(a) & set(b)) / 100 for a, b in zip(truth, got1, strict=True)]) < recall
    # the shipped bytes answer exactly like the index they came from
    again = ItemIndex.from_bytes(approx.to_bytes(), ids)
    assert np.array_equal(again.search(queries, 100)[0], got)
    with pytest.raises(ValueError):
        ItemIndex.from_bytes(approx.to_bytes(), ids[:-1])


@pytest.fixture(scope="module")
def snap_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    write_ratings_csv(root / "ml", seed=8, users=40, items=120, per_user=(10, 20))
    run_train(root / "ml", root / "snap", epochs=2)
    return root / "snap"


@pytest.fixture(scope="module")
def models(snap_root: Path) -> ServingModels:
    found = latest_snapshots(snap_root)
    assert found is not None
    return ServingModels.load(*found)


def test_recommend_excludes_watched_and_reports_versions(models: ServingModels) -> None:
    state = UserState(user_id=3)
    state = apply(state, ProfileEvent(user_id=3, ts=1.0, age=40, gender="M"), None, Limits())
    for n, item in enumerate([1, 2, 3, 4, 5]):
        w = WatchEvent(event_id=f"w{n}", user_id=3, item_id=item, ts=10.0 + n, watch_seconds=30.0)
        state = apply(state, w, None, Limits())
    rec = Recommender(models, retrieve=50)
    resp = rec.recommend(state, RecommendationRequest(request_id="r", user_id=3, k=7), now=100.0)
    ids = [it.item_id for it in resp.items]
    assert len(ids) == 7 and not set(ids) & {1, 2, 3, 4, 5}
    assert resp.model_versions == models.versions
    scores = [it.score for it in resp.items]
    assert scores == sorted(scores, reverse=True)
    # a different history gives a different user vector, so a different answer
    other = apply(
        UserState(user_id=3),
        WatchEvent(event_id="x", user_id=3, item_id=50, ts=10.0, watch_seconds=30.0),
        None,
        Limits(),
    )
    resp2 = rec.recommend(other, RecommendationRequest(request_id="r2", user_id=3, k=7), 100.0)
    assert [it.item_id for it in resp2.items] != ids
    # unknown user: priors only, still k items
    cold = rec.recommend(None, RecommendationRequest(request_id="c", user_id=999, k=7), 100.0)
    assert len(cold.items) == 7 and cold.error is None


def test_a_micro_batch_answers_each_request_as_it_would_be_answered_alone(
    models: ServingModels,
) -> None:
    rec = Recommender(models, retrieve=50)
    states: list[UserState | None] = [None]
    for uid, items in ((1, [1, 2, 3]), (2, [40, 41, 42, 43, 44, 45, 46, 47]), (3, [7])):
        st = UserState(user_id=uid)
        for n, item in enumerate(items):
            ev = WatchEvent(event_id=f"b{uid}-{n}", user_id=uid, item_id=item, ts=10.0 + n,
                            watch_seconds=30.0)  # fmt: skip
            st = apply(st, ev, None, Limits())
        states.append(st)
    uids = [100 if s is None else s.user_id for s in states]
    requests = [
        RecommendationRequest(request_id=f"r{i}", user_id=uid, k=3 + i)
        for i, uid in enumerate(uids)
    ]
    cached = rec.vectors([states[2]], [requests[2]])[0]  # one request with a refreshed vector
    vectors = [None, None, cached, None]
    batch = rec.recommend_many(states, requests, 100.0, vectors)
    alone = [
        rec.recommend(s, r, 100.0, v) for s, r, v in zip(states, requests, vectors, strict=True)
    ]
    assert [b.request_id for b in batch] == [r.request_id for r in requests]
    for b, a in zip(batch, alone, strict=True):
        assert [it.item_id for it in b.items] == [it.item_id for it in a.items]
        assert [it.score for it in b.items] == pytest.approx([it.score for it in a.items], 1e-5)
        assert b.latency_ms["batch"] == 4 and "batch" not in a.latency_ms


def test_latest_snapshots_ignores_partial_directories(
    tmp_path: Path, models: ServingModels
) -> None:
    (tmp_path / "candidates-zzz").mkdir()  # no manifest: a half-written or foreign directory
    assert latest_snapshots(tmp_path) is None


def test_worker_refuses_a_corrupt_snapshot_and_keeps_answering(
    tmp_path: Path, snap_root: Path
) -> None:
    """A tampered snapshot is refused (metric), requests get an error response, nothing raises;
    once a good pair is in place the same worker object serves."""
    import shutil

    from prometheus_client import REGISTRY

    from stream.live_models import Serving
    from watchnext.settings import Settings

    root = tmp_path / "snap"
    shutil.copytree(snap_root, root)
    (ranker,) = root.glob("ranker-*")
    weights = next(ranker.glob("*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[:-4] + b"evil")
    before = REGISTRY.get_sample_value("watchnext_snapshot_refused_total") or 0.0
    serving = Serving(Settings(snapshot_dir=root, data_dir=tmp_path / "w"), retry_s=0.0)
    req = RecommendationRequest(request_id="r", user_id=1, k=3)
    assert serving.check() is False  # what the loader thread runs
    assert serving.answer(None, req, 0.0).error is not None
    serving.refresh([UserState(user_id=1)], [0.0])  # must not raise either
    assert REGISTRY.get_sample_value("watchnext_snapshot_refused_total") == before + 1
    weights.write_bytes(good)
    assert serving.check() is True and serving.check() is False  # swapped once
    ok = serving.answer(None, req, 0.0)
    assert ok.error is None and len(ok.items) == 3


def test_a_vector_computed_for_a_request_is_cached_and_not_refreshed_again(
    models: ServingModels, tmp_path: Path
) -> None:
    from stream.live_models import Serving
    from stream.metrics import VECTORS_REFRESHED
    from watchnext.settings import Settings

    serving = Serving(Settings(snapshot_dir=tmp_path / "none", data_dir=tmp_path / "w"))
    serving.recommender = Recommender(models, retrieve=50)
    ev = WatchEvent(event_id="v1", user_id=8, item_id=3, ts=10.0, watch_seconds=30.0)
    state = apply(UserState(user_id=8), ev, None, Limits())
    request = RecommendationRequest(request_id="v", user_id=8, k=5)
    (first,) = serving.answer_many([state], [request], 100.0)
    assert first.items and first.latency_ms["vector"] > 0
    refreshed = VECTORS_REFRESHED._value.get()
    serving.refresh([state], [99.0])  # the refresher reaches the user after the request did
    assert VECTORS_REFRESHED._value.get() == refreshed  # current already: not recomputed
    (again,) = serving.answer_many([state], [request], 100.0)
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    # a request with another device than the user's gets its own vector, never cached for them
    other = RecommendationRequest(request_id="o", user_id=8, k=5, context={"device": "tv"})
    serving.cache = type(serving.cache)()
    serving.answer_many([state], [other], 100.0)
    assert len(serving.cache) == 0


def test_the_blend_serves_both_sources_and_never_an_item_watched_long_ago(
    models: ServingModels,
) -> None:
    import dataclasses

    assert models.i2i is not None  # `watchnext train` ships the item-to-item source
    limits = Limits(history_length=5)
    state = UserState(user_id=4)
    for n, item in enumerate(range(1, 31)):
        ev = WatchEvent(event_id=f"l{n}", user_id=4, item_id=item, ts=10.0 + n, watch_seconds=9.0)
        state = apply(state, ev, None, limits)
    assert len(state.history) == 5 and set(state.watched) == set(range(1, 31))
    rec = Recommender(models, retrieve=50, retrieve_i2i=30)
    request = RecommendationRequest(request_id="b", user_id=4, k=80)
    resp = rec.recommend(state, request, now=100.0)
    ids = [it.item_id for it in resp.items]
    assert len(ids) == len(set(ids)) and not set(ids) & set(range(1, 31))
    sources = {it.source for it in resp.items}
    assert sources & {"i2i", "candidates+i2i"} and sources & {"candidates", "candidates+i2i"}
    for it in resp.items:
        assert it.source_scores is not None and set(it.source_scores) == {"candidates", "i2i"}
        assert it.source_ranks is not None and set(it.source_ranks) == set(it.source.split("+"))
    assert {"vector", "retrieve", "i2i", "merge", "rank"} <= set(resp.latency_ms)
    # a state from before the watched filter knows only its rolling history: old items return
    legacy = dataclasses.replace(state, watched=())
    again = rec.recommend(legacy, request, now=100.0)
    assert set(it.item_id for it in again.items) & set(range(1, 26))


def test_an_item_to_item_source_that_nominates_nothing_still_scores_and_ranks(
    models: ServingModels,
) -> None:
    state = UserState(user_id=6)
    for n, item in enumerate(range(1, 9)):
        ev = WatchEvent(event_id=f"n{n}", user_id=6, item_id=item, ts=10.0 + n, watch_seconds=9.0)
        state = apply(state, ev, None, Limits())
    request = RecommendationRequest(request_id="z", user_id=6, k=60)
    alone = Recommender(models, retrieve=60, retrieve_i2i=0).recommend(state, request, 100.0)
    blended = Recommender(models, retrieve=60, retrieve_i2i=40).recommend(state, request, 100.0)
    assert all("candidates" in it.source for it in alone.items)  # nothing nominated by i2i
    assert any(it.source == "i2i" for it in blended.items)
    both = {it.item_id: it for it in blended.items}
    for it in alone.items:
        assert it.source_scores is not None and "i2i" in it.source_scores
        other = both.get(it.item_id)
        if other is not None and other.source_ranks and "i2i" in other.source_ranks:
            # the rank it holds in the item-to-item list is the same, nominating or not
            assert (
                it.source_ranks is not None
                and it.source_ranks.get("i2i") == other.source_ranks["i2i"]
            )


def test_blend_pages_of_a_user_sample_still_replay_every_users_state(
    models: ServingModels,
) -> None:
    """``eval system`` builds the ranker's pages for a sample of users on large data sets; every
    user's state must still be the full replay (served), and the sampled users' pages must be
    exactly the pages they get when all users are paged."""
    from model.blend_pages import blend_pages
    from watchnext.eval_system import page_sample

    ids = [int(i) for i in models.candidates.items.ids]
    events = {
        u: [
            WatchEvent(
                event_id=f"w{u}-{k}",
                user_id=u,
                item_id=ids[(7 * u + 3 * k) % len(ids)],
                ts=1000.0 + 10 * k,
                watch_seconds=60.0 + k,
            )
            for k in range(6)
        ]
        for u in range(1, 9)
    }
    cfg, i2i = models.candidate_cfg, models.i2i
    full: dict[int, UserState] = {}
    part: dict[int, UserState] = {}
    every = blend_pages(events, {}, models.candidates, cfg, i2i, 0, progress=False, states=full)
    sample = page_sample(sorted(events), 3, seed=0)
    assert sample is not None and len(sample) == 3 and sample <= set(events)
    assert page_sample(sorted(events), 8, seed=0) is None  # everyone fits: no sample
    some = blend_pages(
        events, {}, models.candidates, cfg, i2i, 0, progress=False, states=part, page_users=sample
    )
    assert {p.user for p in every.pages} > sample >= {p.user for p in some.pages}
    # negatives 0: a sampled user's pages depend on nothing random, so they are identical
    mine = [(p.user, p.ts, p.features.items, p.watch_seconds.tolist()) for p in some.pages]
    theirs = [
        (p.user, p.ts, p.features.items, p.watch_seconds.tolist())
        for p in every.pages
        if p.user in sample
    ]
    assert mine == theirs and mine
    assert set(part) == set(full) == set(events)
    for u in events:
        assert part[u].history == full[u].history  # the served state's watches: all of them
        if u in sample:
            assert part[u] == full[u]
        else:
            assert not part[u].impressions  # no page was shown to an unsampled user


def test_excluded_and_taken_down_items_are_never_returned_by_either_source(
    models: ServingModels,
) -> None:
    limits = Limits(history_length=5)
    state = UserState(user_id=4)
    for n, item in enumerate(range(1, 11)):
        ev = WatchEvent(event_id=f"x{n}", user_id=4, item_id=item, ts=10.0 + n, watch_seconds=9.0)
        state = apply(state, ev, None, limits)
    rec = Recommender(models, retrieve=50, retrieve_i2i=30)
    plain = RecommendationRequest(request_id="p", user_id=4, k=20)
    first = [it.item_id for it in rec.recommend(state, plain, now=100.0).items]
    excluded = first[:5]
    ask = plain.model_copy(update={"exclude": excluded})
    removed = np.array(sorted(first[5:8]), dtype=np.int64)
    (resp,) = rec.recommend_many([state], [ask], 100.0, [None], removed)
    ids = [it.item_id for it in resp.items]
    assert len(ids) == 20 and not set(ids) & (set(excluded) | set(removed.tolist()))
    assert not set(ids) & set(range(1, 11))  # and still nothing watched
    # the exclusions are the request's own: another request in the batch keeps them
    both = rec.recommend_many([state, state], [ask, plain], 100.0, [None, None])
    assert [it.item_id for it in both[1].items] == first


def test_ranked_ids_are_the_answers_items_in_order(models: ServingModels) -> None:
    # the evaluation reads ids only (serving.system_eval); they must be what a request gets
    limits = Limits(history_length=8)
    states = []
    for uid in (3, 4, 5):
        st = UserState(user_id=uid)
        for n, item in enumerate(range(uid, uid + 8)):
            ev = WatchEvent(
                event_id=f"r{uid}-{n}", user_id=uid, item_id=item, ts=5.0 + n, watch_seconds=9.0
            )
            st = apply(st, ev, None, limits)
        states.append(st)
    rec = Recommender(models, retrieve=50, retrieve_i2i=30)
    reqs = [
        RecommendationRequest(request_id=f"q{i}", user_id=s.user_id, k=40)
        for i, s in enumerate(states)
    ]
    blends, stages = rec.blends(states, rec.vectors(states, reqs))
    answers = rec.rank_blends(states, reqs, [100.0, 101.0, 102.0], blends, stages)
    ids = rec.ranked_ids(states, reqs, [100.0, 101.0, 102.0], blends)
    assert [a.tolist() for a in ids] == [[it.item_id for it in r.items] for r in answers]
    assert all(len(a) == 40 for a in ids)
