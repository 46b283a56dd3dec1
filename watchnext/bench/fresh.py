"""``watchnext bench fresh``: from an upload to the first answer that contains it, no retrain.

Protocol (one run, one local broker, one worker serving a snapshot trained before the uploads):
for each of ``--items`` new items, a fresh group of users is made: ``watchers`` first watchers
and one target user, all with the same history of ``history`` snapshot items of one channel
(sent through the broker beforehand, so the target's history makes the new item relevant).
Then the clock starts: the item's upload is sent (same channel), and each watcher watches it.
The target asks for ``k`` recommendations every ``poll_ms`` until an answer contains the item
(``k`` 200, more than the candidates ranked: "retrievable" means the overlay put it among the
candidates; where the served ranker then placed it is reported as its rank).
``upload_to_retrievable_s`` is the median, over items, of the time from sending the upload to
the arrival of that first answer; per item also how many answers came before it and where the
item was ranked. No retrain runs, and the worker's index never holds the new items: every one
of them reaches the answer through the freshness overlay (``watchnext_overlay_items``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from deploy.kafka.runner import ensure_kafka
from model.candidate_snapshot import load_candidates
from serving.client import send_request
from serving.recommend import latest_snapshots
from stream.events import (
    USER_EVENT_KINDS,
    EventKind,
    RecommendationRequest,
    UploadEvent,
    WatchEvent,
)
from stream.lag import wait_caught_up
from stream.process import WorkerProcess, metric_value
from stream.producer import encode_events, make_producer, send_all
from stream.topics import create_topics
from watchnext.bench.ladder import ResponseReader
from watchnext.bench.loadgen_procs import watch_record
from watchnext.settings import Settings

NEW_ITEM_BASE = 9_000_000  # ids no snapshot holds


def _groups(snapshot_dir: Path, items: int, history: int) -> list[list[int]]:
    """``items`` histories of ``history`` snapshot items each, one channel per history when
    the snapshot knows channels (else consecutive ids)."""
    from model.ranker_snapshot import load_ranker, snapshot_items

    found = latest_snapshots(snapshot_dir)
    assert found is not None
    trained, _ = load_candidates(found[0])
    known = [int(i) for i in trained.items.ids]
    metas = snapshot_items(load_ranker(found[1])[1])
    by_channel: dict[str, list[int]] = {}
    for item in known:
        meta = metas.get(item)
        if meta is not None and meta.channel is not None:
            by_channel.setdefault(meta.channel, []).append(item)
    full = sorted((c for c, v in by_channel.items() if len(v) >= history), key=str)
    if len(full) >= items:
        return [by_channel[c][:history] for c in full[:items]]
    step = max(1, len(known) // max(items, 1))
    return [known[g * step : g * step + history] for g in range(items)]


def _channel(snapshot_dir: Path, item: int) -> str | None:
    from model.ranker_snapshot import load_ranker, snapshot_items

    found = latest_snapshots(snapshot_dir)
    assert found is not None
    meta = snapshot_items(load_ranker(found[1])[1]).get(item)
    return meta.channel if meta is not None else None


def run_fresh_bench(
    settings: Settings,
    items: int = 5,
    watchers: int = 5,
    history: int = 8,
    k: int = 200,
    poll_ms: float = 100.0,
    timeout_s: float = 60.0,
    snapshots: Path | None = None,
    out: Path | None = None,
    as_json: bool = False,
) -> dict[str, Any]:
    """Run the protocol (module docstring); returns (and prints) the result."""
    work = Path(tempfile.mkdtemp(prefix="watchnext-bench-fresh-"))
    tag = uuid.uuid4().hex[:6]
    try:
        if snapshots is None:
            from watchnext.bench.serve import WORLD
            from watchnext.train import run_train_synthetic

            print(f"training both stages on a synthetic world ({WORLD.n_users} users) ...")
            run_train_synthetic(WORLD, work / "snapshots", epochs=4, progress=False)
            snapshots = work / "snapshots"
        groups = _groups(snapshots, items, history)
        base = settings.model_copy(
            update={
                "topic_prefix": f"bench-{tag}.",
                "app_id": f"bench-fresh-{tag}",
                "metrics_port": 0,
                "data_dir": work / "worker",
                "snapshot_dir": snapshots,
                "snapshot_poll_s": 3600.0,  # no swap during the run
            }
        )
        with ensure_kafka(base) as bootstrap:
            create_topics(base, bootstrap)
            worker = WorkerProcess(base, bootstrap, work / "worker.log").start()
            try:
                worker.wait_ready()
                worker.wait_serving(timeout_s=600)
                result = _measure(
                    base, bootstrap, worker, snapshots, groups, watchers, k, poll_ms, timeout_s
                )
            finally:
                worker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_fresh.json").write_text(json.dumps(result, indent=1))
    print(
        f"upload → retrievable: median {result['upload_to_retrievable_s']:.2f}s, max "
        f"{result['upload_to_retrievable_max_s']:.2f}s over {len(result['per_item'])} items "
        f"(overlay items on the worker: {result['overlay_items']:.0f})"
    )
    if as_json:
        print(json.dumps(result))
    return result


def _measure(
    settings: Settings,
    bootstrap: str,
    worker: WorkerProcess,
    snapshots: Path,
    groups: list[list[int]],
    watchers: int,
    k: int,
    poll_ms: float,
    timeout_s: float,
) -> dict[str, Any]:
    now = time.time()
    seed = []
    for g, hist in enumerate(groups):
        for u in range(watchers + 1):
            uid = 8_000_000 + 100 * g + u
            for n, item in enumerate(hist):
                seed.append(watch_record(uid, f"bf-{uid}-{n}", item, now - 3600 + 10 * n))
    send_all(settings, bootstrap, seed, total=len(seed), desc="seed users", progress=False)
    topics = [settings.topic(kind.value) for kind in USER_EVENT_KINDS]
    wait_caught_up(settings, bootstrap, settings.app_id, topics, timeout_s=300)
    reader = ResponseReader(settings, bootstrap)
    reader.start()
    producer = make_producer(settings, bootstrap, linger_ms=0)
    per_item = []
    try:
        for g, hist in enumerate(groups):
            item = NEW_ITEM_BASE + g
            target = 8_000_000 + 100 * g + watchers
            upload = UploadEvent(
                item_id=item,
                ts=time.time(),
                duration_seconds=600.0,
                channel=_channel(snapshots, hist[0]),
                title=f"bench fresh {g}",
            )
            started = time.time()
            events: list[tuple[EventKind, Any]] = [(EventKind.UPLOAD, upload)]

            for u in range(watchers):
                uid = 8_000_000 + 100 * g + u
                events.append(
                    (
                        EventKind.WATCH,
                        WatchEvent(
                            event_id=f"bf-{uid}-new",
                            user_id=uid,
                            item_id=item,
                            ts=time.time(),
                            watch_seconds=500.0,
                        ),
                    )
                )
            send_all(settings, bootstrap, encode_events(events), progress=False)
            asked, found = 0, None
            while found is None and time.time() - started < timeout_s:
                rid = f"bf-{g}-{asked}"
                send_request(
                    producer, settings, RecommendationRequest(request_id=rid, user_id=target, k=k)
                )
                producer.flush()
                asked += 1
                deadline = time.time() + poll_ms / 1000
                while time.time() < deadline:
                    time.sleep(0.01)
                hits = [
                    (arrived, [it.item_id for it in resp.items].index(item), resp.request_id)
                    for arrived, resp in list(reader.arrived.values())
                    if resp.request_id.startswith(f"bf-{g}-")
                    and item in {it.item_id for it in resp.items}
                ]
                found = min(hits) if hits else None
            if found is None:
                text = worker.metrics_text()
                raise TimeoutError(
                    f"new item {item} never answered within {timeout_s}s (overlay items "
                    f"{metric_value(text, 'watchnext_overlay_items', {'kind': 'items'}):.0f}, "
                    "fresh watches sent "
                    f"{metric_value(text, 'watchnext_fresh_watches_sent_total'):.0f}, read "
                    f"{metric_value(text, 'watchnext_fresh_watches_total'):.0f}; "
                    f"{len(reader.arrived)} answers)"
                )
            per_item.append(
                {
                    "item": item,
                    "upload_to_retrievable_s": round(found[0] - started, 3),
                    "rank": found[1],
                    "requests_sent": asked,
                }
            )
    finally:
        reader.stop.set()
        reader.join(5)
        producer.close()
    text = worker.metrics_text()
    seconds = [p["upload_to_retrievable_s"] for p in per_item]
    return {
        "items": len(groups),
        "watchers_per_item": watchers,
        "k": k,
        "poll_ms": poll_ms,
        "upload_to_retrievable_s": round(float(np.median(seconds)), 3),
        "upload_to_retrievable_max_s": round(float(np.max(seconds)), 3),
        "per_item": per_item,
        "overlay_items": metric_value(text, "watchnext_overlay_items", {"kind": "items"}),
        "fresh_watches_sent": metric_value(text, "watchnext_fresh_watches_sent_total"),
        "index_items": metric_value(text, "watchnext_index_items"),
    }
