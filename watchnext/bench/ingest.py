"""``watchnext bench ingest``: sustained events/s through Kafka -> faust worker -> RocksDB.

Protocol: N watch events for U users are produced first (a backlog), then drained three times
from the same topics in the same run: by a bare aiokafka consumer that only iterates the records
(the ceiling of Python consumption on this machine), by the ceiling loop of
:mod:`watchnext.bench.ceiling` (the worker's per-event work in plain aiokafka: validation, state
transition, one RocksDB write batch, acknowledged changelog records, commits; no faust), and by
a real worker (the same work through faust). The worker's rate is N divided by the time from its
first processed event to the end of its last batch, read from its own metrics; the ceiling's is
timed the same way. ``ratio_to_ceiling`` is the share of the reachable rate the worker gets.
Each repetition uses fresh consumer groups and empty stores; medians are reported.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from deploy.kafka.runner import ensure_kafka
from stream.events import EventKind, WatchEvent
from stream.process import WorkerProcess, metric_value
from stream.producer import send_all
from stream.topics import create_topics
from watchnext.bench.ceiling import backlog_consumer, run_ceiling
from watchnext.settings import Settings


def synthetic_watches(n: int, users: int, seed: int = 0) -> list[tuple[EventKind, bytes, bytes]]:
    """N valid watch events (Zipf-ish items, uniform users), pre-encoded."""
    rng = random.Random(seed)
    t0 = 1.7e9
    out = []
    for i in range(n):
        uid = rng.randrange(users)
        ev = WatchEvent(
            event_id=f"b{seed}-{i}",
            user_id=uid,
            item_id=int(rng.paretovariate(1.2)) % 100_000,
            ts=t0 + i * 0.01,
            watch_seconds=rng.uniform(0, 600),
            item_duration_seconds=600.0,
            device="web",
            country="US",
        )
        out.append((EventKind.WATCH, str(uid).encode(), ev.to_json()))
    return out


async def _bare_consume(settings: Settings, bootstrap: str, topics: list[str], n: int) -> float:
    consumer = backlog_consumer(settings, bootstrap, topics, "bare")
    await consumer.start()
    try:
        seen, first = 0, None
        while seen < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batches and first is None:
                first = time.perf_counter()
            for records in batches.values():
                seen += len(records)
        assert first is not None
        return n / (time.perf_counter() - first)
    finally:
        await consumer.stop()


def _worker_rate(
    settings: Settings,
    bootstrap: str,
    n: int,
    workdir: Path,
    timeout_s: float,
    profile: Path | None = None,
) -> float:
    log = workdir / f"{settings.app_id}.log"
    worker = WorkerProcess(settings, bootstrap, log, profile=profile).start()
    try:
        worker.wait_ready()
        deadline = time.monotonic() + timeout_s
        while True:
            text = worker.metrics_text()
            done = metric_value(text, "watchnext_events_total")
            if done >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker processed {done:.0f}/{n} events in {timeout_s:.0f}s")
            time.sleep(1.0)  # scrape gently: the scrape shares the worker's GIL
        first = metric_value(text, "watchnext_ingest_first_event_timestamp_seconds")
        last = metric_value(text, "watchnext_ingest_last_batch_timestamp_seconds")
        return n / (last - first)
    finally:
        worker.stop()


def run_ingest_bench(
    settings: Settings,
    events: int = 200_000,
    users: int = 20_000,
    repeat: int = 3,
    as_json: bool = False,
    profile: Path | None = None,
) -> int:
    """Run the benchmark and print a table (and, with ``as_json``, a final JSON line).

    ``profile``: the first repetition's worker runs under py-spy; its flame graph goes there.
    """
    tag = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="watchnext-bench-"))
    base = settings.model_copy(update={"topic_prefix": f"bench-{tag}.", "metrics_port": 0})
    with ensure_kafka(base) as bootstrap:
        create_topics(base, bootstrap)
        print(f"producing {events} watch events for {users} users ...", flush=True)
        send_all(base, bootstrap, synthetic_watches(events, users), total=events, desc="produce")
        topics = [base.topic(EventKind.WATCH.value)]
        bare, ceiling, worker = [], [], []
        for r in range(repeat):
            bare.append(asyncio.run(_bare_consume(base, bootstrap, topics, events)))
            ceiling.append(
                run_ceiling(base, bootstrap, topics, events, workdir / f"ceiling{r}").events_per_s
            )
            run = base.model_copy(
                update={"app_id": f"bench-{tag}-{r}", "data_dir": workdir / f"w{r}"}
            )
            worker.append(
                _worker_rate(
                    run,
                    bootstrap,
                    events,
                    workdir,
                    timeout_s=max(120, events / 500),
                    profile=profile if r == 0 else None,
                )
            )
            print(
                f"  run {r + 1}/{repeat}: worker {worker[-1]:,.0f} ev/s, "
                f"ceiling {ceiling[-1]:,.0f} ev/s, bare aiokafka {bare[-1]:,.0f} ev/s",
                flush=True,
            )
    result: dict[str, Any] = {
        "events": events,
        "users": users,
        "repeat": repeat,
        "events_per_s": round(statistics.median(worker)),
        "bare_consumer_events_per_s": round(statistics.median(bare)),
    }
    result["ratio"] = round(result["events_per_s"] / result["bare_consumer_events_per_s"], 4)
    result["ceiling_events_per_s"] = round(statistics.median(ceiling))
    result["ratio_to_ceiling"] = round(result["events_per_s"] / result["ceiling_events_per_s"], 4)
    print(f"\n{'metric':34s} {'median':>12s}")
    keys = ("events_per_s", "ceiling_events_per_s", "ratio_to_ceiling")
    for key in (*keys, "bare_consumer_events_per_s", "ratio"):
        print(f"{key:34s} {result[key]:>12,}")
    if as_json:
        print(json.dumps(result))
    return 0
