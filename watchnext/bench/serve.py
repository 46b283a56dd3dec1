"""``watchnext bench serve``: the live request path and per-event vector refresh, measured.

Protocol (one run, one local broker, one worker process):

1. **Catalogue.** Both stages are trained on a small synthetic world (impressions, fatigue,
   watch time); the candidate generator's item tables are then grown to ``--items`` rows: each
   new item is a trained item's embedding plus Gaussian noise (half the per-dimension spread of
   the trained table), so the catalogue keeps the clustered geometry a trained table has. The
   snapshot ships its prebuilt IVF index, as ``watchnext train`` does.
2. **ANN curve.** Recall@100 of the shipped index against exact inner-product search, and
   single-query latency, for a sweep of ``nprobe``, on user vectors of synthetic histories; the
   shipped ``nprobe`` is marked. PNG next to the JSON.
3. **Ingest with refresh.** A backlog of watch events for ``--users`` users is drained by the
   worker (validation, RocksDB + changelog, vector refresh): events/s from the worker's own
   first-event and last-batch gauges. Then watch events are produced at ``paced_events_per_s``
   (2,000/s) for a few seconds and the worker's event→vector histogram (Kafka timestamp to
   refreshed vector) gives the p50/p99 of that window, beside the event producer's own
   create→ack latency (how much of event→vector is the producer).
4. **Requests.** Open-loop requests at half of ``--rate`` and then at ``--rate`` per second,
   ``--seconds`` each, to the request topic (:mod:`watchnext.bench.ladder`).
5. **Ladder.** Requests at each rate of ``ladder`` (100, 200, 400, 800/s), a phase each; the
   saturation point is the highest rate answered at ≥ 95 % with p99 ≤ 30 ms.
6. **Mixed load.** The paced events and requests at ``mixed_requests_per_s`` (200/s) at the same
   time: event→vector and request latency under both. The histogram then also holds the
   impression events the worker itself publishes for the requests it answers.

Both generators run in processes of their own (:mod:`watchnext.bench.loadgen_procs`) and report
how far they fell behind their schedule (``*_generator_max_lag_ms``), so a reader can tell
they kept up.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy.kafka.runner import ensure_kafka
from model.candidate import CandidateModel
from model.candidate_snapshot import export_candidates, load_candidates
from model.features import Vocab
from model.item_to_item import ItemToItem
from model.synth import SynthConfig
from model.train_candidate import TrainConfig
from serving.index import IndexConfig, ItemIndex
from serving.recommend import ServingModels, index_extras, latest_snapshots
from stream.events import EventKind, WatchEvent
from stream.process import WorkerProcess, metric_value
from stream.producer import send_all
from stream.topics import create_topics
from watchnext.bench.ladder import request_phase, run_ladder, saturation_rps
from watchnext.bench.loadgen_procs import EventLoad, Generators, paced_events, watch_record
from watchnext.settings import Settings

WORLD = SynthConfig(
    seed=1, n_users=1000, n_items=2000, n_topics=20, sessions_per_user=12, fatigue=0.3
)
NPROBES = (4, 8, 16, 32, 64, 128)


def _watch(uid: int, n: int, item: int, ts: float) -> tuple[EventKind, bytes, bytes]:
    """Watch ``n`` of user ``uid`` (event id ``bs-{uid}-{n}``), as (kind, key, value)."""
    return watch_record(uid, f"bs-{uid}-{n}", item, ts)


def grow_catalogue(cand_dir: Path, out: Path, n_items: int, seed: int = 0) -> Path:
    """A candidate snapshot like ``cand_dir`` whose item tables have ``n_items`` rows."""
    trained, snap = load_candidates(cand_dir)
    old = trained.model
    n_old = old.config.n_items
    rng = np.random.default_rng(seed)
    big = CandidateModel(replace(old.config, n_items=n_items + 1))
    state = old.state_dict()
    new_state = big.state_dict()
    for name, value in state.items():
        target = new_state[name]
        if value.shape == target.shape:
            new_state[name] = value
            continue
        # an item table: keep the trained rows, new rows = noisy copies of trained rows
        grown = target.clone()
        grown[:n_old] = value
        trained_rows = value[1:].numpy()
        spread = trained_rows.std(axis=0, keepdims=True)
        parents = rng.integers(0, len(trained_rows), n_items + 1 - n_old)
        noise = rng.normal(size=(len(parents), value.shape[1])).astype(np.float32)
        grown[n_old:] = torch.from_numpy(trained_rows[parents] + 0.5 * spread * noise)
        new_state[name] = grown
    big.load_state_dict(new_state)
    known = set(trained.items.ids)
    extra = [i for i in range(1, 10 * n_items) if i not in known][: n_items + 1 - n_old]
    trained.model = big
    trained.items = Vocab(list(trained.items.ids) + extra)
    tc = {k: v for k, v in snap.meta["train_config"].items() if k in TrainConfig.__annotations__}
    print(f"building the IVF index over {n_items:,} items ...", flush=True)
    started = time.perf_counter()
    extras = index_extras(trained)
    print(f"  built in {time.perf_counter() - started:.1f}s", flush=True)
    i2i = ItemToItem.from_tensors(snap.tensors, str(snap.meta.get("i2i", "ease")))
    return export_candidates(
        trained,
        out,
        TrainConfig(**tc),
        {"catalogue": n_items},
        "bench",
        extras=extras,
        item_to_item=i2i,
    )


def _histories(n: int, n_items: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    p = pop / pop.sum()
    return [list(rng.choice(n_items, size=int(rng.integers(3, 30)), p=p) + 1) for _ in range(n)]


def ann_curve(models: ServingModels, queries: np.ndarray) -> list[dict[str, float]]:
    """Recall@100 against exact search and single-query latency, per nprobe."""
    index = models.index
    vectors = models.candidates.model.item_vectors()[1:].detach().numpy()
    exact = ItemIndex(vectors, index.item_ids, IndexConfig(exact_max_items=len(vectors)))
    truth, _ = exact.search(queries, 100)
    rows = []
    for nprobe in NPROBES:
        probe = ItemIndex.from_bytes(index.to_bytes(), index.item_ids, IndexConfig(nprobe=nprobe))
        got, _ = probe.search(queries, 100)
        recall = float(
            np.mean([len(set(a) & set(b)) / 100 for a, b in zip(truth, got, strict=True)])
        )
        times = []
        for q in queries:
            t = time.perf_counter()
            probe.search(q[None, :], 200)
            times.append(1000 * (time.perf_counter() - t))
        rows.append(
            {
                "nprobe": nprobe,
                "recall_at_100": round(recall, 4),
                "mean_ms": round(statistics.fmean(times), 3),
                "p99_ms": round(float(np.percentile(times, 99)), 3),
            }
        )
        print(
            f"  nprobe {nprobe:4d}: recall@100 {recall:.4f}, "
            f"{rows[-1]['mean_ms']:.3f} ms mean / {rows[-1]['p99_ms']:.3f} ms p99",
            flush=True,
        )
    return rows


def _plot(rows: list[dict[str, float]], shipped: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["mean_ms"] for r in rows], [r["recall_at_100"] for r in rows], "o-")
    for r in rows:
        mark = " (shipped)" if r["nprobe"] == shipped else ""
        ax.annotate(f"nprobe {r['nprobe']}{mark}", (r["mean_ms"], r["recall_at_100"]), fontsize=7)
    ax.axhline(0.95, ls=":", c="grey")
    ax.set_xlabel("single-query latency, ms (k=200)")
    ax.set_ylabel("recall@100 vs exact")
    ax.set_title("IVF recall/latency, 1 query at a time", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _quantile_from_histogram(text_before: str, text_after: str, name: str, q: float) -> float:
    """q-quantile (seconds) of the observations between two scrapes of a histogram."""
    import re

    def buckets(text: str) -> list[tuple[float, float]]:
        out = []
        for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
            out.append((float(m.group(1)), float(m.group(2))))
        return out

    before = dict(buckets(text_before))
    rows = [(le, n - before.get(le, 0.0)) for le, n in buckets(text_after)]
    total = rows[-1][1]
    if total <= 0:
        return float("nan")
    want, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in rows:
        if n >= want:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (want - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return rows[-1][0]


def run_serve_bench(
    settings: Settings,
    items: int = 1_000_000,
    rate: float = 200.0,
    seconds: float = 20.0,
    users: int = 20_000,
    events_per_user: int = 10,
    out: Path | None = None,
    as_json: bool = False,
    ladder: Sequence[float] = (100, 200, 400, 800),
    ladder_seconds: float | None = None,
    paced_events_per_s: float = 2000.0,
    paced_seconds: float = 5.0,
    light_events_per_s: float = 5.0,
    profile: Path | None = None,
    mixed_requests_per_s: float = 200.0,
    mixed_seconds: float | None = None,
    epochs: int = 4,
) -> int:
    """Run the benchmark; prints tables, writes JSON + PNG under ``out``.

    ``ladder``: offered request rates, ``ladder_seconds`` each (default ``seconds``).
    ``profile``: run the worker under py-spy and write its flame graph there (figures are
    then slower than without: py-spy stops the process for every sample).
    ``paced_events_per_s``: the paced watch events (``paced_seconds`` alone, then
    ``mixed_seconds``, default ``seconds``, with requests at ``mixed_requests_per_s``).
    ``epochs``: of the synthetic-world training behind the snapshot (tests take 1).
    """
    from watchnext.train import run_train_synthetic

    out = Path(out or "docs/results")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="watchnext-bench-serve-"))
    tag = uuid.uuid4().hex[:6]
    result: dict[str, Any] = {"items": items, "users": users}
    try:
        print(f"training both stages on a synthetic world ({WORLD.n_users} users) ...", flush=True)
        small = work / "small"
        cand_small, rank_dir = run_train_synthetic(WORLD, small, epochs=epochs, progress=False)
        snaps = work / "snapshots"
        snaps.mkdir()
        grow_catalogue(cand_small, snaps, items)
        shutil.copytree(rank_dir, snaps / rank_dir.name)
        found = latest_snapshots(snaps)
        assert found is not None
        started = time.perf_counter()
        models = ServingModels.load(*found)
        result["snapshot_load_s"] = round(time.perf_counter() - started, 2)
        print(f"snapshot pair verified and loaded in {result['snapshot_load_s']}s", flush=True)

        print("ANN recall/latency curve (200 user vectors) ...", flush=True)
        from serving.recommend import Recommender
        from stream.state import Limits, UserState, apply

        rec = Recommender(models)
        states: list[UserState | None] = []
        for u, hist in enumerate(_histories(200, min(items, 100_000), seed=3)):
            st = UserState(user_id=u)
            for n, item in enumerate(hist):
                ev = WatchEvent(
                    event_id=f"q{u}-{n}", user_id=u, item_id=int(item), ts=1.7e9 + n,
                    watch_seconds=60.0,
                )  # fmt: skip
                st = apply(st, ev, None, Limits())
            states.append(st)
        queries = rec.vectors(states, [None] * len(states))
        curve = ann_curve(models, queries)
        shipped = models.index.config.nprobe
        at = next(r for r in curve if r["nprobe"] == shipped)
        result.update(nprobe=shipped, recall_at_100=at["recall_at_100"], ann_curve=curve)
        del models, rec

        base = settings.model_copy(
            update={
                "topic_prefix": f"bench-{tag}.",
                "app_id": f"bench-serve-{tag}",
                "metrics_port": 0,
                "data_dir": work / "worker",
                "snapshot_dir": snaps,
            }
        )
        with ensure_kafka(base) as bootstrap, Generators() as gens:
            create_topics(base, bootstrap)
            worker = WorkerProcess(base, bootstrap, work / "worker.log", profile=profile).start()
            try:
                worker.wait_ready()
                started = time.perf_counter()
                worker.wait_serving(timeout_s=600)
                print(f"worker serving after {time.perf_counter() - started:.1f}s", flush=True)
                backlog, picks = _backlog(base, bootstrap, worker, users, events_per_user, items)
                result.update(backlog)
                paced = EventLoad(
                    base, bootstrap, paced_events_per_s, paced_seconds, users, picks, "paced"
                )
                result.update(_paced(worker, gens, paced))
                # the same events at a trickle: what one event waits when nothing else does
                trickle = replace(
                    paced,
                    rate=light_events_per_s,
                    seconds=max(paced_seconds, 10.0),
                    prefix="light",
                    linger_ms=0,  # one event at a time: no producer batching to wait for
                )
                light = _paced(worker, gens, trickle)
                result["light"] = {
                    k.replace("paced_", ""): v
                    for k, v in light.items()
                    if k.startswith(("paced_events_per_s", "event_to_vector", "producer_"))
                }
                # half the rate first (below saturation on this machine), then the target
                half, _ = request_phase(
                    base,
                    bootstrap,
                    gens,
                    users=users,
                    rate=rate / 2,
                    seconds=seconds,
                    prefix="half",
                )
                print(f"requests at {rate / 2:.0f}/s: {half}", flush=True)
                result["half_rate"] = half
                print(f"requests: {rate:.0f}/s for {seconds:.0f}s ...", flush=True)
                full, _ = request_phase(
                    base, bootstrap, gens, users=users, rate=rate, seconds=seconds, prefix="full"
                )
                result.update(full)
                step_s = seconds if ladder_seconds is None else ladder_seconds
                print(f"ladder: {', '.join(f'{r:g}' for r in ladder)}/s, {step_s:g}s each ...")
                rows = run_ladder(base, bootstrap, gens, users=users, rates=ladder, seconds=step_s)
                result.update(ladder=rows, saturation_rps=saturation_rps(rows))
                mixed_s = seconds if mixed_seconds is None else mixed_seconds
                result["mixed"] = _mixed(
                    worker,
                    gens,
                    replace(paced, seconds=mixed_s, prefix="mixed"),
                    mixed_requests_per_s,
                )
            finally:
                worker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "bench_serve.json").write_text(json.dumps(result, indent=1))
    _plot(result["ann_curve"], result["nprobe"], out / "bench_serve_ann.png")
    print(f"\n{'metric':36s} {'value':>12s}")
    for key in (
        "offered_rps",
        "achieved_rps",
        "p50_ms",
        "p99_ms",
        "compute_p99_ms",
        "recall_at_100",
        "events_per_s_with_refresh",
        "event_to_vector_p99_ms",
        "producer_create_to_ack_p99_ms",
        "event_generator_max_lag_ms",
        "saturation_rps",
    ):
        print(f"{key:36s} {result.get(key)!s:>12s}")
    for key, value in result["mixed"].items():
        print(f"{'mixed.' + key:36s} {value!s:>12s}")
    cols = ("offered_rps", "achieved_rps", "answered", "errors", "p50_ms", "p99_ms")
    print("\nladder " + " ".join(f"{c:>14s}" for c in (*cols, "compute_p99_ms")))
    for row in result["ladder"]:
        print("       " + " ".join(f"{row[c]!s:>14s}" for c in (*cols, "compute_p99_ms")))
    print(f"wrote {out / 'bench_serve.json'} and {out / 'bench_serve_ann.png'}")
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "ann_curve"}))
    return 0


def _settled(worker: WorkerProcess, watches: float, timeout_s: float = 300.0) -> str:
    """Metrics once the worker applied ``watches`` watch events in all and its vector refresh
    (off the ingest path) caught up: the refreshed count unchanged over one scrape interval."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        text = worker.metrics_text()
        done = metric_value(text, "watchnext_events_total", {"kind": "watch"})
        refreshed = metric_value(text, "watchnext_vectors_refreshed_total")
        if done >= watches and refreshed == previous:
            return text
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker applied {done:.0f}/{watches:.0f} watch events")
        previous = refreshed if done >= watches else None
        time.sleep(0.5)  # scrape gently: the scrape shares the worker's GIL


def _backlog(
    settings: Settings,
    bootstrap: str,
    worker: WorkerProcess,
    users: int,
    per_user: int,
    items: int,
) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Drain a backlog; its figures and (a sample of) its items for the paced events."""
    rng = np.random.default_rng(11)
    pop = 1.0 / np.arange(1, min(items, 100_000) + 1) ** 0.9
    p = pop / pop.sum()
    n = users * per_user
    picks = rng.choice(len(p), size=n, p=p) + 1
    t0 = time.time() - 3600
    backlog = [_watch(i % users, i // users, int(picks[i]), t0 + i * 1e-3) for i in range(n)]
    print(f"ingest: {n:,} watch events for {users:,} users (backlog) ...", flush=True)
    send_all(settings, bootstrap, backlog, total=n, desc="produce")
    text = _settled(worker, n, timeout_s=max(300, n / 200))
    first = metric_value(text, "watchnext_ingest_first_event_timestamp_seconds")
    last = metric_value(text, "watchnext_ingest_last_batch_timestamp_seconds")
    rate = n / (last - first)
    refreshed = metric_value(text, "watchnext_vectors_refreshed_total")
    print(f"  {rate:,.0f} events/s with refresh ({refreshed:,.0f} vector refreshes)", flush=True)
    figures = {
        "events": n,
        "events_per_s_with_refresh": round(rate),
        "vectors_refreshed": int(refreshed),
    }
    return figures, tuple(int(x) for x in picks[:10_000])


def _event_to_vector(worker: WorkerProcess, before: str, sent: int) -> tuple[float, float]:
    """p50 and p99 (ms) of event→vector since ``before``, once ``sent`` more watches applied."""
    want = metric_value(before, "watchnext_events_total", {"kind": "watch"}) + sent
    after = _settled(worker, want)
    name = "watchnext_event_to_vector_seconds"
    p50 = _quantile_from_histogram(before, after, name, 0.5)
    p99 = _quantile_from_histogram(before, after, name, 0.99)
    return round(1000 * p50, 1), round(1000 * p99, 1)


def _paced(worker: WorkerProcess, gens: Generators, load: EventLoad) -> dict[str, Any]:
    """Events alone at the paced rate: event→vector, and the producer's own share of it."""
    print(f"ingest at {load.rate:g}/s for {load.seconds:g}s: event→vector latency ...", flush=True)
    before = worker.metrics_text()
    sent = gens.submit(paced_events, load).result()
    p50, p99 = _event_to_vector(worker, before, sent["sent"])
    print(f"  event→vector p50 {p50:.1f} ms, p99 {p99:.1f} ms; producer {sent}", flush=True)
    return {
        "paced_events_per_s": load.rate,
        "event_to_vector_p50_ms": p50,
        "event_to_vector_p99_ms": p99,
        "producer_create_to_ack_p50_ms": sent["create_to_ack_p50_ms"],
        "producer_create_to_ack_p99_ms": sent["create_to_ack_p99_ms"],
        "event_generator_max_lag_ms": sent["max_lag_ms"],
        "paced_events_sent_per_s": sent["sent_per_s"],
    }


def _mixed(
    worker: WorkerProcess, gens: Generators, events: EventLoad, requests_per_s: float
) -> dict[str, Any]:
    """The paced events and requests at the same time, for ``events.seconds``."""
    print(
        f"mixed: {events.rate:g} events/s with {requests_per_s:g} requests/s "
        f"for {events.seconds:g}s ...",
        flush=True,
    )
    before = worker.metrics_text()
    req, sent = request_phase(
        events.settings,
        events.bootstrap,
        gens,
        users=events.users,
        rate=requests_per_s,
        seconds=events.seconds,
        prefix="mixed",
        events=events,
    )
    assert sent is not None
    p50, p99 = _event_to_vector(worker, before, sent["sent"])
    mixed = {
        "events_per_s_offered": events.rate,
        "requests_per_s_offered": requests_per_s,
        "event_to_vector_p50_ms": p50,
        "event_to_vector_p99_ms": p99,
        "request_p50_ms": req["p50_ms"],
        "request_p99_ms": req["p99_ms"],
        "compute_p99_ms": req["compute_p99_ms"],
        "achieved_rps": req["achieved_rps"],
        "answered": req["answered"],
        "requests": req["requests"],
        "errors": req["errors"],
        "events_sent_per_s": sent["sent_per_s"],
        "producer_create_to_ack_p50_ms": sent["create_to_ack_p50_ms"],
        "producer_create_to_ack_p99_ms": sent["create_to_ack_p99_ms"],
        "event_generator_max_lag_ms": sent["max_lag_ms"],
        "request_generator_max_lag_ms": req["request_generator_max_lag_ms"],
    }
    print(f"  {mixed}", flush=True)
    return mixed
