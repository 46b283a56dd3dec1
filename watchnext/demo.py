"""The end-to-end demo: local Kafka, MovieLens-100K replayed as events, a worker, live state.

Everything runs on this machine against a real Apache Kafka broker that the demo starts (or the
cluster in ``WATCHNEXT_KAFKA_BOOTSTRAP``) and stops again at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from serving.client import ResponseReader, send_request
from stream.events import (
    EventKind,
    RecommendationRequest,
    RecommendationResponse,
    UploadEvent,
    WatchEvent,
)
from stream.lag import wait_caught_up
from stream.process import WorkerProcess, metric_value
from stream.producer import encode_events, make_producer, send_all
from stream.readback import read_changelog
from stream.replay import movielens_events
from stream.state import summary
from stream.topics import create_topics
from watchnext.settings import Settings, settings_env


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _ask(
    producer: Any, settings: Settings, reader: ResponseReader, request_id: str, uid: int
) -> RecommendationResponse:
    send_request(producer, settings, RecommendationRequest(request_id=request_id, user_id=uid, k=5))
    producer.flush()
    return reader.wait_for(request_id, timeout_s=120)


def _show(resp: RecommendationResponse, titles: dict[int, str]) -> None:
    if resp.error:
        print(f"user {resp.user_id}: error {resp.error}")
        return
    lat = ", ".join(f"{k} {v:.1f} ms" for k, v in resp.latency_ms.items())
    print(f"user {resp.user_id} ({lat}):")
    for it in resp.items:
        minutes = (it.expected_watch_seconds or 0) / 60
        print(f"  {titles.get(it.item_id, it.item_id)!s:55.55s} expected watch {minutes:5.1f} min")


NEW_UPLOADS = (20001, 20002, 20003)


def _overlay_before_retrain(
    settings: Settings,
    producer: Any,
    reader: ResponseReader,
    worker: WorkerProcess,
    run_id: str,
    uid: int,
) -> None:
    """Before any retrain, the new uploads are already retrievable (the freshness overlay)."""
    deadline = time.monotonic() + 60
    items = 0.0
    while time.monotonic() < deadline:
        items = metric_value(worker.metrics_text(), "watchnext_overlay_items", {"kind": "items"})
        if items >= len(NEW_UPLOADS):
            break
        time.sleep(0.2)
    print(f"freshness overlay: {items:.0f} new uploads retrievable, no retrain yet")
    request = RecommendationRequest(request_id=f"demo-{run_id}-{uid}-fresh", user_id=uid, k=50)
    send_request(producer, settings, request)
    producer.flush()
    answer = reader.wait_for(request.request_id, timeout_s=120)
    ranks = {it.item_id: r for r, it in enumerate(answer.items) if it.item_id in NEW_UPLOADS}
    print(f"user {uid} (not one of their watchers), top 50: new uploads at ranks {ranks or '-'}")


def _fresh_uploads_and_retrain(
    settings: Settings,
    bootstrap: str,
    producer: Any,
    reader: ResponseReader,
    worker: WorkerProcess,
    run_id: str,
    uid: int,
    titles: dict[int, str],
) -> subprocess.Popen[bytes]:
    """New uploads and their first watches arrive, and the same users watch two of what they were
    recommended; the periodic retrainer (started beside the worker) learns them, passes its gate
    (which compares the models on the watches both can score: the recommended items), publishes
    and announces; the worker swaps."""
    _step("new uploads are watched; the retrainer (every 60 s beside the worker) picks them up")
    watchers = range(2, 32)
    picks: dict[int, list[int]] = {}
    for watcher in watchers:
        answer = _ask(producer, settings, reader, f"demo-{run_id}-pick-{watcher}", watcher)
        picks[watcher] = [it.item_id for it in answer.items[:2]]
    now = time.time()
    events: list[tuple[EventKind, Any]] = [
        (
            EventKind.UPLOAD,
            UploadEvent(item_id=i, ts=now, duration_seconds=1800.0, title=f"New upload {i}"),
        )
        for i in NEW_UPLOADS
    ]
    for n, watcher in enumerate(watchers):
        for j, item in enumerate(picks[watcher]):
            w = WatchEvent(
                event_id=f"demo-{run_id}-pick-{watcher}-{item}",
                user_id=watcher,
                item_id=item,
                ts=now + n + 0.5 + j / 10,
                watch_seconds=1200.0,
                request_id=f"demo-{run_id}-pick-{watcher}",
            )
            events.append((EventKind.WATCH, w))
        for j, item in enumerate(NEW_UPLOADS):
            w = WatchEvent(
                event_id=f"demo-{run_id}-new-{watcher}-{item}",
                user_id=watcher,
                item_id=item,
                ts=now + n + j / 10,
                watch_seconds=1500.0,
                item_duration_seconds=1800.0,
            )
            events.append((EventKind.WATCH, w))
    send_all(settings, bootstrap, encode_events(events), progress=False)
    print(
        f"{len(NEW_UPLOADS)} uploads, {len(NEW_UPLOADS) * len(watchers)} watches of them, and "
        f"{sum(map(len, picks.values()))} watches of recommended items by the same users"
    )
    _overlay_before_retrain(settings, producer, reader, worker, run_id, uid)
    log = Path(settings.retrain_dir).with_suffix(".log")
    Path(settings.retrain_dir).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env(settings), "WATCHNEXT_KAFKA_BOOTSTRAP": bootstrap}
    with open(log, "ab") as out:
        retrainer = subprocess.Popen(
            [sys.executable, "-m", "watchnext", "retrain", "--every", "60s", "--epochs", "6"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    print(f"retrainer pid {retrainer.pid}, log {log}; waiting for its first cycle ...")
    try:
        worker.wait_serving(swaps=2, timeout_s=600)
        history = Path(settings.retrain_dir) / "history.jsonl"
        # the cycle's line is appended right after its announcement
        deadline = time.monotonic() + 60
        while not history.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        for line in history.read_text().splitlines():
            h = json.loads(line)
            print(f"retrain cycle: {h['outcome']} after {h['seconds']}s, metrics {h['metrics']}")
        text = worker.metrics_text()
        items = metric_value(text, "watchnext_index_items")
        print(f"worker swapped; index now holds {items:.0f} items")
        answer = _ask(producer, settings, reader, f"demo-{run_id}-{uid}-swapped", uid)
        print(f"user {uid} is now served by {answer.model_versions}")
        _show(answer, {**titles, **{i: f"New upload {i}" for i in NEW_UPLOADS}})
    except BaseException:  # the caller only learns of the retrainer on success: stop it here
        retrainer.terminate()
        retrainer.wait(60)
        raise
    return retrainer


def run_demo(settings: Settings, users: list[int], limit: int | None = None) -> int:
    """Run the demo; returns the process exit code."""
    from deploy.kafka import runner

    home = Path(settings.kafka_data_dir).parent / "demo"
    run_id = time.strftime("%Y%m%d-%H%M%S")
    settings = settings.model_copy(
        update={
            "kafka_data_dir": home / "kafka",
            "data_dir": home / f"worker-{run_id}",
            "app_id": f"watchnext-demo-{run_id}",
            "metrics_port": 0,
            "snapshot_dir": home / f"snapshots-{run_id}",
            "retrain_dir": home / f"retrain-{run_id}",
        }
    )
    started_broker = False
    if settings.kafka_bootstrap:
        bootstrap = settings.kafka_bootstrap
    else:
        _step("starting Apache Kafka (KRaft, single node on 127.0.0.1)")
        info = runner.start(settings, data_dir=settings.kafka_data_dir, fresh=True)
        bootstrap, started_broker = info.bootstrap, True
        print(f"broker {info.bootstrap} (Kafka {info.version}); log {info.log_file}")
    worker = WorkerProcess(settings, bootstrap)
    retrainer: subprocess.Popen[bytes] | None = None
    try:
        _step("creating topics")
        for name in create_topics(settings, bootstrap):
            print(f"  {name}")
        _step("training the candidate generator and the ranker on MovieLens-100K (snapshots)")
        from watchnext.train import run_train

        pair = run_train(settings.movielens_dir, settings.snapshot_dir)
        assert pair is not None  # a single process is rank 0
        cand_dir, rank_dir = pair
        print(f"snapshots: {cand_dir.name}, {rank_dir.name}")

        _step("starting a stream worker (faust + RocksDB tables)")
        worker.start()
        worker.wait_ready()
        worker.wait_serving()
        print(f"worker ready and serving; metrics at {worker.metrics_url}/metrics")

        _step(
            f"replaying MovieLens-100K from {settings.movielens_dir} as upload/profile/watch events"
        )
        t0 = time.perf_counter()
        n = send_all(
            settings,
            bootstrap,
            encode_events(movielens_events(settings.movielens_dir, limit)),
            desc="replay",
        )
        print(f"sent {n} events in {time.perf_counter() - t0:.1f}s")

        _step("sending 3 invalid events (they must be dead-lettered, not crash the worker)")
        producer = make_producer(settings, bootstrap)
        watch_topic = settings.topic(EventKind.WATCH.value)
        producer.send(watch_topic, key=b"1", value=b"{not json")
        producer.send(
            watch_topic,
            key=b"1",
            value=json.dumps(
                {
                    "schema_version": 1,
                    "event_id": "bad-1",
                    "user_id": 1,
                    "item_id": 1,
                    "ts": 1.0,
                    "watch_seconds": -5,
                }
            ).encode(),
        )
        producer.send(watch_topic, key=b"1", value=json.dumps({"schema_version": 9}).encode())
        producer.flush()

        _step("waiting until the worker has committed every event")
        topics = [settings.topic(k.value) for k in EventKind]
        waited = wait_caught_up(settings, bootstrap, settings.app_id, topics, timeout_s=600)
        text = worker.metrics_text()
        first = metric_value(text, "watchnext_ingest_first_event_timestamp_seconds")
        last = metric_value(text, "watchnext_ingest_last_batch_timestamp_seconds")
        applied = metric_value(text, "watchnext_events_total", {"outcome": "applied"})
        dead = metric_value(text, "watchnext_dead_letters_total")
        print(
            f"caught up ({waited:.1f}s after the replay); applied {applied:.0f} events, "
            f"{dead:.0f} dead letters; ingest {applied / max(last - first, 1e-9):,.0f} events/s"
        )

        _step("recommendations (request topic -> worker -> response topic)")
        from model.datasets.movielens import load

        titles = {i: it.title for i, it in load(settings.movielens_dir).items.items()}
        reader = ResponseReader(settings, bootstrap)
        answers = {}
        for uid in users:
            answers[uid] = _ask(producer, settings, reader, f"demo-{run_id}-{uid}", uid)
            _show(answers[uid], titles)

        _step("a new watch for the first user changes their state and next answer at once")
        uid = users[0]
        before = read_changelog(settings, bootstrap).get(uid)
        top = answers[uid].items[0].item_id if answers[uid].items else 50
        print(f"user {uid} now watches their top recommendation: {titles.get(top, top)}")
        producer.send(
            watch_topic,
            key=str(uid).encode(),
            value=WatchEvent(
                event_id=f"demo-{run_id}",
                user_id=uid,
                item_id=top,
                ts=time.time(),
                watch_seconds=5400,
                item_duration_seconds=5400,
                device="tv",
                country="US",
            ).to_json(),
        )
        producer.flush()
        wait_caught_up(settings, bootstrap, settings.app_id, topics, timeout_s=60)
        after = read_changelog(settings, bootstrap).get(uid)
        for label, st in (("before", before), ("after ", after)):
            recent = [w.item_id for w in st.history[-5:]] if st else []
            print(f"user {uid} {label}: {st.n_watches if st else 0} watches, last watched {recent}")
        again = _ask(producer, settings, reader, f"demo-{run_id}-{uid}-again", uid)
        _show(again, titles)
        old = [it.item_id for it in answers[uid].items]
        new = [it.item_id for it in again.items]
        print(
            f"changed: {len(set(new) - set(old))} new items; "
            f"the watched one is gone: {top not in new}"
        )
        retrainer = _fresh_uploads_and_retrain(
            settings, bootstrap, producer, reader, worker, run_id, uid, titles
        )
        reader.close()
        producer.close()

        _step("live per-user state (read back from the table's changelog)")
        states = read_changelog(settings, bootstrap)
        print(f"{len(states)} users in the table")
        for uid in users:
            st = states.get(uid)
            print(json.dumps(summary(st)) if st else f"user {uid}: no state")
        _step(f"done. While a worker runs, Prometheus metrics are at {worker.metrics_url}/metrics")
        return 0
    finally:
        if retrainer is not None and retrainer.poll() is None:
            retrainer.terminate()
            retrainer.wait(60)
        worker.stop()
        if started_broker:
            runner.stop(Path(settings.kafka_data_dir))
            print("[kafka] local broker stopped", flush=True)
