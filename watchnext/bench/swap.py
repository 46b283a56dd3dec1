"""``watchnext bench swap``: request latency while snapshots are swapped, vs steady state.

Protocol (one run, one local broker, one worker): the 1M-item catalogue pair of ``bench serve``
is served; open-loop requests at ``--rate`` per second run throughout. After ``--steady``
seconds, ``--swaps`` times: a new pair is published (the same tensors under new versions, so
the worker does the full verification, index load and swap of a 1M-item snapshot) and announced
on ``model-updates``; the next swap starts ``--gap`` seconds after the new version was first seen
in a response. Latency is end-to-end (request sent → response read). "Steady" is every request
sent before the first announcement; "swap" every request sent from an announcement until its
version was first served plus ``--gap``. Announce→serve is the client's view: publication of the
announcement to the first response carrying the new version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from deploy.kafka.runner import ensure_kafka
from model.snapshot import MANIFEST
from serving.recommend import latest_snapshots
from stream.announce import announcement, publish
from stream.events import USER_EVENT_KINDS, RecommendationRequest
from stream.lag import wait_caught_up
from stream.process import WorkerProcess, metric_value
from stream.producer import make_producer, send_all
from stream.topics import create_topics
from watchnext.bench.ladder import ResponseReader
from watchnext.bench.serve import WORLD, _watch, grow_catalogue
from watchnext.settings import Settings


def _republish(pair: tuple[Path, Path], root: Path, version: str) -> dict[str, str]:
    """Copy a snapshot pair under a new version (temporary name, then rename: atomic)."""
    versions = {}
    for src in pair:
        kind = src.name.split("-", 1)[0]
        tmp = root / f".tmp-{kind}-{version}"
        shutil.copytree(src, tmp)
        manifest = json.loads((tmp / MANIFEST).read_text())
        manifest["version"] = version
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.utime(tmp)  # copytree kept the source's times; this pair is new
        tmp.rename(root / f"{kind}-{version}")
        versions[kind] = version
    return versions


class _Load(threading.Thread):
    def __init__(self, settings: Settings, bootstrap: str, rate: float, users: int) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate, self.users = settings, rate, users
        self.producer = make_producer(settings, bootstrap, linger_ms=0)
        self.sent: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(5)
        started = time.time()
        n = 0
        while not self.stop.is_set():
            pause = started + n / self.rate - time.time()
            if pause > 0:
                time.sleep(pause)
            uid = int(rng.integers(0, self.users))
            req = RecommendationRequest(request_id=f"swap-{n}", user_id=uid, k=10)
            self.sent[req.request_id] = time.time()
            self.producer.send(
                self.settings.topic("requests"), key=str(uid).encode(), value=req.to_json()
            )
            n += 1
        self.producer.flush()
        self.producer.close()


def run_swap_bench(
    settings: Settings,
    items: int = 1_000_000,
    rate: float = 50.0,
    swaps: int = 3,
    steady_s: float = 20.0,
    gap_s: float = 10.0,
    users: int = 2_000,
    out: Path | None = None,
    as_json: bool = False,
    epochs: int = 4,
) -> int:
    """Run the protocol (module docstring); ``epochs`` of the training behind the snapshot."""
    from watchnext.train import run_train_synthetic

    work = Path(tempfile.mkdtemp(prefix="watchnext-bench-swap-"))
    tag = uuid.uuid4().hex[:6]
    result: dict[str, Any] = {"items": items, "rate": rate}
    try:
        print(f"training both stages on a synthetic world ({WORLD.n_users} users) ...", flush=True)
        small = work / "small"
        cand_small, rank_dir = run_train_synthetic(WORLD, small, epochs=epochs, progress=False)
        snaps = work / "snapshots"
        snaps.mkdir()
        grow_catalogue(cand_small, snaps, items)
        shutil.copytree(rank_dir, snaps / rank_dir.name)
        first = latest_snapshots(snaps)
        assert first is not None
        base = settings.model_copy(
            update={
                "topic_prefix": f"bench-{tag}.",
                "app_id": f"bench-swap-{tag}",
                "metrics_port": 0,
                "data_dir": work / "worker",
                "snapshot_dir": snaps,
                "snapshot_poll_s": 3600.0,  # swaps come from announcements only
            }
        )
        with ensure_kafka(base) as bootstrap:
            create_topics(base, bootstrap)
            worker = WorkerProcess(base, bootstrap, work / "worker.log").start()
            try:
                worker.wait_ready()
                worker.wait_serving(timeout_s=600)
                seed = [
                    _watch(i % users, i // users, 1 + i % 5000, time.time() - 60)
                    for i in range(users * 5)
                ]
                send_all(base, bootstrap, seed, total=len(seed), desc="seed users")
                topics = [base.topic(k.value) for k in USER_EVENT_KINDS]
                wait_caught_up(base, bootstrap, base.app_id, topics, timeout_s=600)
                reader = ResponseReader(base, bootstrap)
                reader.start()
                load = _Load(base, bootstrap, rate, users)
                load.start()
                print(f"steady load {rate:.0f} requests/s for {steady_s:.0f}s ...", flush=True)
                time.sleep(steady_s)
                windows: list[tuple[float, float]] = []
                to_serve: list[float] = []
                for s in range(1, swaps + 1):
                    version = time.strftime("%Y%m%dT%H%M%S") + f"-swap{s}"
                    versions = _republish(first, snaps, version)
                    announced = time.time()
                    publish(base, bootstrap, announcement(versions))
                    deadline = announced + 300
                    seen_at = None
                    while seen_at is None and time.time() < deadline:
                        hits = [
                            arr
                            for arr, resp in list(reader.arrived.values())
                            if resp.model_versions.get("candidates") == version
                        ]
                        seen_at = min(hits) if hits else None
                        time.sleep(0.05)
                    if seen_at is None:
                        raise TimeoutError(f"version {version} never served")
                    to_serve.append(seen_at - announced)
                    print(
                        f"  swap {s}: announce → served in {seen_at - announced:.2f}s", flush=True
                    )
                    windows.append((announced, seen_at + gap_s))
                    time.sleep(max(0.0, seen_at + gap_s - time.time()))
                load.stop.set()
                load.join(10)
                time.sleep(5)
                reader.stop.set()
                reader.join(5)
                text = worker.metrics_text()
            finally:
                worker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first_announce = windows[0][0]
    steady, during, failed = [], [], 0
    for rid, t in load.sent.items():
        got = reader.arrived.get(rid)
        if got is None or got[1].error:
            failed += 1
            continue
        ms = 1000 * (got[0] - t)
        if t < first_announce:
            steady.append(ms)
        elif any(a <= t <= b for a, b in windows):
            during.append(ms)
    result.update(
        swaps=swaps,
        requests=len(load.sent),
        failed_requests=failed,
        steady_p50_ms=round(float(np.percentile(steady, 50)), 2),
        steady_p99_ms=round(float(np.percentile(steady, 99)), 2),
        swap_p50_ms=round(float(np.percentile(during, 50)), 2),
        swap_p99_ms=round(float(np.percentile(during, 99)), 2),
        announce_to_serve_s=round(float(np.median(to_serve)), 2),
        announce_to_serve_max_s=round(float(np.max(to_serve)), 2),
        worker_swaps=int(metric_value(text, "watchnext_snapshot_swaps_total")),
    )
    result["swap_to_steady_p99_ratio"] = round(result["swap_p99_ms"] / result["steady_p99_ms"], 2)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_swap.json").write_text(json.dumps(result) + "\n")
    print(f"\n{'metric':28s} {'value':>10s}")
    for k, v in result.items():
        print(f"{k:28s} {v!s:>10s}")
    if as_json:
        print(json.dumps(result))
    return 0
