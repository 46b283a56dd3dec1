"""The retrainer on the real broker: catch-up, warm start, the promotion gate, resume after kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from model.candidate_snapshot import load_candidates
from serving.recommend import latest_snapshots
from stream.announce import TOPIC_KIND, parse
from stream.events import EventKind, UploadEvent, WatchEvent
from stream.replay import movielens_events
from stream.topics import create_topics
from stream.training_log import TrainingLog
from tests.mldata import write_ratings_csv
from tests.streamkit import produce
from watchnext.retrain import RetrainConfig, retrain_once
from watchnext.settings import settings_env
from watchnext.train import run_train

pytestmark = pytest.mark.integration

NEW_ITEMS = (9001, 9002, 9003)


def _fresh_events(
    after: float, users: range, tag: str, catalogue: list[int]
) -> list[tuple[EventKind, Any]]:
    """Uploads of NEW_ITEMS after the training window, and watches of them by ``users``; each
    user also watches two ``catalogue`` items (ones the served model knows): the hold-out
    watches the gate can compare on."""
    out: list[tuple[EventKind, Any]] = [
        (
            EventKind.UPLOAD,
            UploadEvent(item_id=i, ts=after + 1, duration_seconds=5400.0, title=f"new {i}"),
        )
        for i in NEW_ITEMS
    ]
    for n, u in enumerate(users):
        for j, item in enumerate(NEW_ITEMS):
            out.append(
                (
                    EventKind.WATCH,
                    WatchEvent(
                        event_id=f"{tag}-{u}-{item}",
                        user_id=u,
                        item_id=item,
                        ts=after + 100 + 10 * n + j,
                        watch_seconds=3000.0,
                    ),
                )
            )
        for j, item in enumerate(_two_of(catalogue, u)):
            out.append(
                (
                    EventKind.WATCH,
                    WatchEvent(
                        event_id=f"{tag}-{u}-old-{item}",
                        user_id=u,
                        item_id=item,
                        ts=after + 105 + 10 * n + j,
                        watch_seconds=3000.0,
                    ),
                )
            )
    return out


def _two_of(catalogue: list[int], user: int) -> tuple[int, int]:
    n = len(catalogue)
    return catalogue[(7 * user) % n], catalogue[(7 * user + 1 + user % (n - 1)) % n]


def _announcements(settings, bootstrap: str) -> list[dict[str, str]]:
    return [a.versions for a in _records(settings, bootstrap)]


def _records(settings, bootstrap: str) -> list[Any]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    tp = TopicPartition(settings.topic(TOPIC_KIND), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    batches = consumer.poll(timeout_ms=3000).values()
    out = [parse(m.value) for batch in batches for m in batch]
    consumer.close()
    return out


def test_retrainer_promotes_rejects_and_resumes(settings, kafka_bootstrap, tmp_path: Path) -> None:
    data = tmp_path / "ml"
    write_ratings_csv(data, seed=4, users=40, items=120, per_user=(10, 20))
    settings = settings.model_copy(
        update={"snapshot_dir": tmp_path / "snap", "retrain_dir": tmp_path / "retrain"}
    )
    first_cands, _ = run_train(data, settings.snapshot_dir, epochs=2)
    first = load_candidates(first_cands)[0]
    window_end, known = first.window_end, list(first.items.ids)
    create_topics(settings, kafka_bootstrap)
    replay = list(movielens_events(data))
    fresh = _fresh_events(window_end, range(1, 31), "a", known)
    produce(settings, kafka_bootstrap, replay + fresh)

    # 1. a killed retrainer: kill -9 once its checkpoint is written (training under way)
    env = {**os.environ, **settings_env(settings), "WATCHNEXT_KAFKA_BOOTSTRAP": kafka_bootstrap}
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchnext", "retrain", "--once", "--epochs", "50"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = settings.retrain_dir / "log" / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), "the retrainer never checkpointed its training log"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert latest_snapshots(settings.snapshot_dir)[0] == first_cands  # nothing half-published

    # 2. resume: nothing is read twice, and the warm-started model now knows the new items
    cfg = RetrainConfig(epochs=2, tolerance=1.0, min_holdout_users=10, progress=False)
    promoted = retrain_once(settings, kafka_bootstrap, cfg)
    assert promoted.outcome == "promoted" and promoted.new_events == 0
    assert promoted.events == len(replay) + len(fresh)
    assert promoted.metrics["holdout_users"] >= 10  # the window after the current snapshot
    assert promoted.metrics["comparable_users"] >= 10
    # the new uploads' watches are reported apart: the served model cannot score them
    assert promoted.metrics["new_item_share_current"] == pytest.approx(3 / 5, abs=0.05)
    assert "new_recall_at_50" in promoted.metrics and "current_recall_at_50" in promoted.metrics
    cands_dir, _ = latest_snapshots(settings.snapshot_dir)
    trained = load_candidates(cands_dir)[0]
    old = load_candidates(first_cands)[0]
    assert set(NEW_ITEMS) <= set(trained.items.ids)
    assert trained.items.ids[: len(old.items.ids)] == old.items.ids  # existing rows kept
    assert _announcements(settings, kafka_bootstrap)[-1] == promoted.versions

    # 3. nothing new: no training, no snapshot
    assert retrain_once(settings, kafka_bootstrap, cfg).outcome == "nothing_new"

    # 4. a gate that cannot be met rejects: the served pair stays, nothing is announced
    fresh_b = _fresh_events(window_end + 5000, range(31, 41), "b", known)
    produce(settings, kafka_bootstrap, fresh_b)
    strict = RetrainConfig(epochs=1, tolerance=-1.0, min_holdout_users=5, progress=False)
    rejected = retrain_once(settings, kafka_bootstrap, strict)
    assert rejected.outcome == "rejected", rejected.metrics
    assert rejected.new_events == len(fresh_b)
    assert latest_snapshots(settings.snapshot_dir)[0] == cands_dir
    assert len(_announcements(settings, kafka_bootstrap)) == 1

    history = [
        json.loads(line)
        for line in (settings.retrain_dir / "history.jsonl").read_text().splitlines()
    ]
    assert [h["outcome"] for h in history] == ["promoted", "nothing_new", "rejected"]

    # 5. a window of only brand-new items cannot tell the models apart: undecided, pair kept
    only_new = [
        (kind, _shift(e, 20_000))
        for kind, e in _fresh_events(window_end + 20_000, range(1, 41), "c", known)
        if kind is EventKind.UPLOAD or e.item_id in NEW_ITEMS
    ]
    produce(settings, kafka_bootstrap, only_new)
    # since the served snapshot, only users 31-40 (wave b) watched items both models know
    undecided = retrain_once(settings, kafka_bootstrap, replace(cfg, min_holdout_users=15))
    assert undecided.outcome == "undecided", undecided.metrics
    assert "kept the served pair" in undecided.metrics["gate"]
    assert latest_snapshots(settings.snapshot_dir)[0] == cands_dir
    assert len(_announcements(settings, kafka_bootstrap)) == 1

    # 6. `watchnext snapshots rollback`: the first pair, announced as a deliberate rollback
    first_version = first_cands.name.removeprefix("candidates-")
    back = subprocess.run(
        [sys.executable, "-m", "watchnext", "snapshots", "rollback", first_version],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert back.returncode == 0, back.stderr
    announced = _records(settings, kafka_bootstrap)[-1]
    assert announced.rollback and announced.versions == {
        "candidates": first_version,
        "ranker": first_version,
    }
    assert (settings.snapshot_dir / ".pins" / first_version).is_file()


def test_a_segment_written_without_its_checkpoint_is_read_once(
    settings, kafka_bootstrap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Death between the segment's rename and the checkpoint's: the next catch-up reads the
    same records again into a new segment; the log still yields each event once."""
    import stream.training_log as tl

    create_topics(settings, kafka_bootstrap)
    events = _fresh_events(1_700_000_000.0, range(1, 6), "c", [1, 2, 3])
    produce(settings, kafka_bootstrap, events)
    training_log = TrainingLog(tmp_path / "log")
    real = tl._atomic_write

    def die_at_checkpoint(path: Path, data: bytes) -> None:
        if path.name == tl.CHECKPOINT:
            raise KeyboardInterrupt("killed")
        real(path, data)

    monkeypatch.setattr(tl, "_atomic_write", die_at_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        training_log.catch_up(settings, kafka_bootstrap)
    monkeypatch.setattr(tl, "_atomic_write", real)
    assert training_log.catch_up(settings, kafka_bootstrap) == len(events)  # read again
    assert len(training_log.segments()) == 2
    assert len(list(training_log.events())) == len(events)
    assert training_log.catch_up(settings, kafka_bootstrap) == 0


def test_periodic_retrainer_beside_the_worker(settings, kafka_bootstrap, tmp_path: Path) -> None:
    """``watchnext retrain --every 3s`` next to a worker: each wave of new uploads is learned,
    promoted, announced and swapped in; the index grows by the new items each time."""
    from stream.process import WorkerProcess, metric_value

    data = tmp_path / "ml"
    write_ratings_csv(data, seed=12, users=40, items=120, per_user=(10, 20))
    settings = settings.model_copy(
        update={
            "snapshot_dir": tmp_path / "snap",
            "retrain_dir": tmp_path / "retrain",
            "snapshot_poll_s": 600.0,  # only announcements trigger swaps here
        }
    )
    first_cands, _ = run_train(data, settings.snapshot_dir, epochs=1)
    first = load_candidates(first_cands)[0]
    window_end, known = first.window_end, list(first.items.ids)
    create_topics(settings, kafka_bootstrap)
    produce(settings, kafka_bootstrap, list(movielens_events(data)))
    worker = WorkerProcess(settings, kafka_bootstrap, tmp_path / "worker.log").start()
    env = {**os.environ, **settings_env(settings), "WATCHNEXT_KAFKA_BOOTSTRAP": kafka_bootstrap}
    retrainer = None
    try:
        worker.wait_ready()
        worker.wait_serving()
        items_before = metric_value(worker.metrics_text(), "watchnext_index_items")
        produce(settings, kafka_bootstrap, _fresh_events(window_end, range(1, 26), "wave1", known))
        retrainer = subprocess.Popen(
            # tolerance 1: this test is about waves being swapped in, not about the gate's margin
            [
                sys.executable,
                "-m",
                "watchnext",
                "retrain",
                "--every",
                "3s",
                "--epochs",
                "1",
                "--tolerance",
                "1",
            ],
            env=env,
            stdout=open(tmp_path / "retrain.log", "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        worker.wait_serving(swaps=2, timeout_s=180)
        after_one = metric_value(worker.metrics_text(), "watchnext_index_items")
        assert after_one == items_before + len(NEW_ITEMS)
        wave2 = [
            (kind, _shift(e, 10_000))
            for kind, e in _fresh_events(window_end + 10_000, range(1, 26), "w2", known)
        ]
        produce(settings, kafka_bootstrap, wave2)
        worker.wait_serving(swaps=3, timeout_s=180)
        assert metric_value(worker.metrics_text(), "watchnext_index_items") == after_one + len(
            NEW_ITEMS
        )
    finally:
        if retrainer is not None:
            retrainer.terminate()
            retrainer.wait(60)
        assert worker.stop() == 0
    outcomes = [
        json.loads(line)["outcome"]
        for line in (settings.retrain_dir / "history.jsonl").read_text().splitlines()
    ]
    assert outcomes.count("promoted") == 2 and "rejected" not in outcomes


def _shift(event: Any, offset: int) -> Any:
    """The same event about item ``item_id + offset`` when it is one of NEW_ITEMS (another wave
    of new items); catalogue watches stay as they are."""
    if event.item_id not in NEW_ITEMS:
        return event
    return event.model_copy(update={"item_id": event.item_id + offset})
