"""The synthetic world: deterministic, valid contracts, fresh-upload spikes, ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from model.synth import DAY, SynthConfig, World
from stream.events import EVENT_MODELS, EventKind


def test_same_seed_same_world_and_events() -> None:
    a, b = (
        World(SynthConfig(seed=4, n_users=50, n_items=500)),
        World(SynthConfig(seed=4, n_users=50, n_items=500)),
    )
    assert list(a.user_events(9)) == list(b.user_events(9))
    assert np.array_equal(a.item_upload, b.item_upload)
    c = World(SynthConfig(seed=5, n_users=50, n_items=500))
    assert list(c.user_events(9)) != list(a.user_events(9))


def test_events_are_valid_time_ordered_and_watch_only_uploaded_items() -> None:
    w = World(SynthConfig(seed=1, n_users=40, n_items=2000))
    for user in range(40):
        events = list(w.user_events(user))
        ts = [e.ts for _, e in events]
        assert ts == sorted(ts)
        for kind, e in events:
            EVENT_MODELS[kind].model_validate_json(e.to_json())  # round-trips its contract
            if kind is EventKind.WATCH:
                assert w.item_upload[e.item_id] <= e.ts
                assert 0 <= e.watch_seconds <= e.item_duration_seconds


def test_fresh_uploads_spike_then_decay() -> None:
    w = World(SynthConfig(seed=2, n_items=1000))
    items = np.arange(1000)
    up = w.item_upload
    at_upload = w.popularity(items, 0) * 0 + np.array(
        [w.popularity(np.array([i]), up[i] + 60)[0] for i in items]
    )
    later = np.array([w.popularity(np.array([i]), up[i] + 10 * DAY)[0] for i in items])
    before = np.array([w.popularity(np.array([i]), up[i] - 60)[0] for i in items])
    assert (before == 0).all() and (at_upload > 5 * later).all()


def test_cli_writes_jsonl_that_producers_read(tmp_path: Path) -> None:
    out, truth = tmp_path / "ev.jsonl", tmp_path / "truth.npz"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "watchnext",
            "synth",
            "--users",
            "20",
            "--items",
            "300",
            "--out",
            str(out),
            "--truth",
            str(truth),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-1500:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {line["kind"] for line in lines}
    assert {"upload", "profile", "watch", "impression"} <= kinds
    assert sum(1 for line in lines if line["kind"] == "upload") == 300
    saved = np.load(truth)
    assert saved["item_topic"].shape == (300,) and json.loads(str(saved["config"]))["n_users"] == 20


def test_synthetic_timelines_carry_searches_and_context() -> None:
    from model.datasets.synthetic import synthetic_timelines
    from stream.state import tokenize

    tl, ctx = synthetic_timelines(SynthConfig(seed=4, n_users=60, n_items=300))
    assert len(tl) > 40
    with_search = [t for t in tl.values() if t.searches]
    assert with_search, "the world's search probability should give some users searches"
    for t in with_search:
        for _ts, toks in t.searches:
            words = [w for w in toks if " " not in w]
            assert list(toks) == tokenize(" ".join(words))  # the stream's own tokenizer
    assert ctx.sizes()["device"] > 1 and ctx.sizes()["region"] > 1
