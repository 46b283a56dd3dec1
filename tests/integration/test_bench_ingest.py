"""``watchnext bench ingest`` and its ceiling loop on the real broker, at a small scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from stream.events import EventKind
from stream.producer import send_all
from stream.readback import read_topic
from stream.state import UserState, apply, decode
from stream.topics import create_topics
from tests.eventgen import assert_states_match, make_events, recompute
from tests.streamkit import limits_of, produce, user_topics
from watchnext.bench.ceiling import run_ceiling
from watchnext.bench.ingest import run_ingest_bench

pytestmark = pytest.mark.integration


def test_bench_ingest_reports_the_ceiling(settings, kafka_bootstrap, capsys) -> None:
    settings = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap})
    assert run_ingest_bench(settings, events=3000, users=300, repeat=1, as_json=True) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["events"] == 3000 and last["repeat"] == 1
    assert last["ceiling_events_per_s"] > 0 and last["events_per_s"] > 0
    assert last["ratio_to_ceiling"] == pytest.approx(
        last["events_per_s"] / last["ceiling_events_per_s"], abs=1e-3
    )
    assert last["ratio"] == pytest.approx(
        last["events_per_s"] / last["bare_consumer_events_per_s"], abs=1e-3
    )


def test_ceiling_does_the_workers_work(settings, kafka_bootstrap, tmp_path: Path) -> None:
    """The ceiling's RocksDB and changelog hold exactly what the state transition gives."""
    create_topics(settings, kafka_bootstrap)
    events = make_events(seed=5, users=300, n=3000)
    produce(settings, kafka_bootstrap, events)
    send_all(settings, kafka_bootstrap, [(EventKind.WATCH, b"7", b"not json")], progress=False)
    n = len(events) + 1
    run = run_ceiling(settings, kafka_bootstrap, user_topics(settings), n, tmp_path / "db")
    assert run.events == n and run.events_per_s > 0 and run.dead_letters == 1

    db = Rdict(str(run.db_path), options=Options(raw_mode=True))
    try:
        stored = {int(k): decode(v) for k, v in db.items()}
    finally:
        db.close()
    limits = limits_of(settings)
    assert_states_match(stored, recompute(events, limits))
    for uid in sorted(stored)[:5]:  # and the pure transition over the user's own events
        state = UserState(user_id=uid)
        for _, ev in events:
            if ev.user_id == uid:
                state = apply(state, ev, None, limits)
        assert stored[uid].history == state.history
        assert (stored[uid].n_watches, stored[uid].n_searches, stored[uid].n_impressions) == (
            state.n_watches,
            state.n_searches,
            state.n_impressions,
        )
        assert stored[uid].impressions == state.impressions
        assert stored[uid].search_tokens == state.search_tokens
        assert stored[uid].profile == state.profile

    changelog = list(read_topic(settings, kafka_bootstrap, run.changelog_topic))
    assert len(changelog) == run.changelog_records >= len(stored)
    latest = {int(key): value for _, key, value in changelog if key is not None}
    assert {uid: decode(v) for uid, v in latest.items()} == stored
