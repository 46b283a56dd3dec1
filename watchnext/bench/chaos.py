"""``watchnext bench chaos``: faults under load on a real broker, then an exact accounting.

Protocol (in the manner of faust's own stress tests, whose killer sends signals to workers at
random while producers run):

1. A broker of our own (loopback, free ports, fresh data dir; never a broker we did not start),
   topics at ``partitions`` partitions, a small synthetic snapshot pair, ``workers`` workers in
   one consumer group (static member ids, standby replicas of the tables).
2. Load for ``minutes``: the seeded event mix (:mod:`stream.loadgen`, 2% exact re-sends) at
   ``event_rate`` events/s and recommendation requests at ``request_rate``/s to users of the
   same stream. Producers are idempotent with acks=all; a send the broker did not acknowledge
   is sent again (so the input itself is at-least-once).
3. Faults from a seeded schedule, one at a time, ``gap_s`` apart: SIGKILL a worker, SIGTERM a
   worker (both restarted after ``down_s``, as a supervisor would), restart the broker (clean
   stop, ``down_s`` down, start on the same ports). A worker that exits without being told to
   is counted as a crash and restarted.
4. Drain: producers finish (every event acknowledged), the consumer group commits every offset
   of the event and request topics, every acknowledged request has its response.
5. Check: the input is read back from the topics and the per-user state recomputed from it
   (:mod:`stream.consistency`, independent of the worker's transition code); the changelog (the
   durable table) is compared with it. ``lost``: effects of acknowledged events missing
   (including acknowledged events absent from the topics); ``duplicated``: effects applied more
   than once; ``wrong_state``: users whose state differs otherwise. All must be 0.
   ``requests_unanswered``: acknowledged requests without a response after the drain.

``--json``: the last stdout line is one JSON object (``events``, ``kills``, ``broker_restarts``,
``lost``, ``duplicated``, ``wrong_state``, ``requests``, ``requests_unanswered`` and more);
``--out`` also gets ``bench_chaos.json`` and a timeline PNG (request latency, faults marked).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream.events import EventKind, RecommendationRequest, event_key
from watchnext.settings import Settings

FAULTS = ("sigkill", "sigterm", "broker")


@dataclass
class ChaosConfig:
    """One chaos run. Defaults: 5 minutes, 2 workers, 8 partitions, a fault every 10–25 s."""

    minutes: float = 5.0
    workers: int = 2
    seed: int = 0
    event_rate: float = 300.0
    request_rate: float = 10.0
    users: int = 2000
    partitions: int = 8
    gap_s: tuple[float, float] = (10.0, 25.0)
    down_s: tuple[float, float] = (2.0, 8.0)
    faults: tuple[str, ...] = FAULTS
    drain_s: float = 300.0
    slow_request_s: float = 30.0
    retry_after_s: float = 45.0  # a client re-sends a request unanswered for this long
    client_resend: bool = True  # False: every request is sent once (--no-client-resend)
    keep_dir: bool = False  # keep broker data and worker logs for a post-mortem


@dataclass
class Fault:
    """One injected fault: what, on which process, when (seconds from the start of the load)."""

    kind: str
    target: str
    at_s: float
    down_s: float
    back_s: float = 0.0  # when the target was back (worker ready / broker answering)
    # the longest a request sent from 1 s before this fault to 1 s before the next waited for
    # its answer: the fault's failover window as a client sees it (unanswered ones not counted)
    max_wait_s: float = 0.0


@dataclass
class ChaosReport:
    """What the run did and what the checker found."""

    events: int = 0
    kills: int = 0
    sigterms: int = 0
    broker_restarts: int = 0
    worker_crashes: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong_state: int = 0
    users_checked: int = 0
    events_in_topics: int = 0
    acked_events_missing_from_topics: int = 0
    requests: int = 0
    requests_unanswered: int = 0
    requests_errors: int = 0
    requests_slow: int = 0
    requests_retried: int = 0  # answered only after the client re-sent them
    request_p50_ms: float = 0.0
    request_p99_ms: float = 0.0
    request_max_ms: float = 0.0
    minutes: float = 0.0
    drain_s: float = 0.0
    not_drained: str = ""  # partitions the group never committed to the end, if any
    faults: list[Fault] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)


# --- load ---------------------------------------------------------------------------------------


class _Sender:
    """Sends keyed records, keeps unacknowledged ones for the next attempt."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        from stream.producer import make_producer

        self.producer = make_producer(
            settings, bootstrap, linger_ms=5, request_timeout_ms=10_000, retry_backoff_ms=200
        )

    def send(self, records: list[tuple[str, bytes, bytes, Any]]) -> tuple[list[Any], list[Any]]:
        """records (topic, key, value, tag) -> (acknowledged tags, failed records)."""
        futures = [(r, self.producer.send(r[0], key=r[1], value=r[2])) for r in records]
        with contextlib.suppress(Exception):  # broker down: the unacknowledged are sent again
            self.producer.flush(timeout=30)
        acked, failed = [], []
        for rec, fut in futures:
            if fut.is_done and fut.succeeded():
                acked.append(rec[3])
            else:
                failed.append(rec)
        return acked, failed

    def close(self) -> None:
        self.producer.close(timeout=10)


class _Load(threading.Thread):
    """A load thread: ``stop`` ends it; an exception is kept in ``error`` for the runner."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the runner
            self.error = exc

    def _run(self) -> None:
        raise NotImplementedError


class _EventLoad(_Load):
    """The seeded event mix at a steady rate; remembers every acknowledged event."""

    def __init__(self, settings: Settings, bootstrap: str, cfg: ChaosConfig) -> None:
        super().__init__("chaos-events")
        self.settings, self.bootstrap, self.cfg = settings, bootstrap, cfg
        self.acked: list[tuple[EventKind, Any]] = []

    def _run(self) -> None:
        from stream.loadgen import make_events

        cfg = self.cfg
        sender = _Sender(self.settings, self.bootstrap)
        pending: list[tuple[str, bytes, bytes, Any]] = []
        chunk, made = max(1, int(cfg.event_rate / 10)), 0
        started = time.monotonic()
        while not self.stop.is_set():
            due = int(cfg.event_rate * (time.monotonic() - started)) - made
            if due <= 0:
                time.sleep(0.02)
                continue
            n = min(due, 20 * chunk)  # after a stall, catch up in bounded steps
            seed = cfg.seed * 1_000_003 + made  # ids embed the seed: unique across chunks
            for kind, ev in make_events(seed, cfg.users, n, start=made):
                topic = self.settings.topic(kind.value)
                pending.append((topic, event_key(kind, ev), ev.to_json(), (kind, ev)))
            made += n
            acked, pending = sender.send(pending)
            self.acked.extend(acked)
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            acked, pending = sender.send(pending)
            self.acked.extend(acked)
        sender.close()
        if pending:
            raise RuntimeError(f"{len(pending)} events never acknowledged by the broker")


class _RequestLoad(_Load):
    """Requests at a steady rate to users of the event stream, as a real client sends them:
    remembers when each was first sent, and re-sends (same request id) one that has had no
    answer for ``retry_after_s``. Re-sends are counted: each is a request the service dropped
    or delayed past the client's patience."""

    def __init__(
        self, settings: Settings, bootstrap: str, cfg: ChaosConfig, answered: dict[str, Any]
    ) -> None:
        super().__init__("chaos-requests")
        self.settings, self.bootstrap, self.cfg = settings, bootstrap, cfg
        self.answered = answered  # request id -> anything, filled by the response reader
        self.sent: dict[str, float] = {}
        self.retried: set[str] = set()
        self.resends = 0
        self.finish = threading.Event()  # no more re-sends either (``stop``: no new requests)

    def _run(self) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed + 17)
        sender = _Sender(self.settings, self.bootstrap)
        topic = self.settings.topic("requests")
        pending: list[tuple[str, bytes, bytes, Any]] = []
        first: dict[str, float] = {}
        payload: dict[str, tuple[bytes, bytes]] = {}
        last_try: dict[str, float] = {}
        n = 0
        started = time.monotonic()
        next_retry_scan = started
        while not self.finish.is_set():
            now = time.monotonic()
            if cfg.client_resend and now >= next_retry_scan:
                next_retry_scan = now + 1.0
                for rid, at in list(last_try.items()):
                    if rid in self.answered:
                        del last_try[rid]
                    elif now - at > cfg.retry_after_s:
                        pending.append((topic, *payload[rid], rid))
                        last_try[rid] = now
                        self.retried.add(rid)
                        self.resends += 1
            if self.stop.is_set() or n >= cfg.request_rate * (now - started):
                if pending:
                    acked, pending = sender.send(pending)
                    self._acked(acked, first)
                time.sleep(0.05)
                continue
            rid = f"chaos-{cfg.seed}-{n}"
            req = RecommendationRequest(request_id=rid, user_id=rng.randrange(cfg.users), k=5)
            first[rid] = time.time()
            payload[rid] = (str(req.user_id).encode(), req.to_json())
            last_try[rid] = now
            pending.append((topic, *payload[rid], rid))
            n += 1
            acked, pending = sender.send(pending)
            self._acked(acked, first)
        sender.close()

    def _acked(self, acked: list[Any], first: dict[str, float]) -> None:
        for a in acked:
            self.sent.setdefault(a, first[a])

    def unanswered(self) -> int:
        return sum(r not in self.answered for r in self.sent)


class _Responses(threading.Thread):
    """Polls :class:`serving.client.ResponseReader` (from the topic's start) through broker
    restarts; ``seen`` maps request id -> (first time seen, response)."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        from serving.client import ResponseReader

        super().__init__(name="chaos-responses", daemon=True)
        self.reader = ResponseReader(settings, bootstrap, from_start=True)
        self.seen = self.reader.seen
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.reader.poll()
            except Exception:  # broker restarting: poll again
                time.sleep(0.5)
        self.reader.close()


# --- the run ------------------------------------------------------------------------------------


class _Cluster:
    """The broker and the workers of one run, with the fault operations."""

    def __init__(self, base: Settings, work: Path, cfg: ChaosConfig) -> None:
        self.base, self.work, self.cfg = base, work, cfg
        self.kafka_dir = work / "kafka"
        self.bootstrap = ""
        self.workers: list[Any] = []
        self.load_started = 0.0  # wall clock, for the timeline
        self.waits: list[tuple[float, float]] = []  # (sent since load start, wait) per request

    def start_broker(self, fresh: bool = False) -> None:
        from deploy.kafka import runner

        info = runner.start(self.base, data_dir=self.kafka_dir, fresh=fresh)
        self.bootstrap = info.bootstrap

    def stop_broker(self) -> None:
        from deploy.kafka import runner

        runner.stop(self.kafka_dir)

    def worker_settings(self, i: int) -> Settings:
        name = f"worker-{i}"
        return self.base.model_copy(update={"data_dir": self.work / name, "worker_id": name})

    def start_worker(self, i: int) -> Any:
        from stream.process import WorkerProcess

        w = WorkerProcess(self.worker_settings(i), self.bootstrap, self.work / f"worker-{i}.log")
        w.start()
        if i < len(self.workers):
            self.workers[i] = w
        else:
            self.workers.append(w)
        return w

    def crashed(self) -> list[int]:
        return [
            i
            for i, w in enumerate(self.workers)
            if w.proc is not None and w.proc.poll() is not None
        ]


def _schedule(cfg: ChaosConfig, rng: random.Random) -> list[str]:
    """Fault kinds in seeded order: each kind once per round, rounds shuffled."""
    kinds: list[str] = []
    while cfg.faults and len(kinds) < 1000:
        round_ = list(cfg.faults)
        rng.shuffle(round_)
        kinds += round_
    return kinds


def _inject(cluster: _Cluster, kind: str, rng: random.Random, t0: float) -> Fault:
    cfg = cluster.cfg
    down = rng.uniform(*cfg.down_s)
    at = time.monotonic() - t0
    if kind == "broker":
        fault = Fault(kind, "broker", round(at, 1), round(down, 1))
        cluster.stop_broker()
        time.sleep(down)
        cluster.start_broker()
    else:
        i = rng.randrange(len(cluster.workers))
        fault = Fault(kind, f"worker-{i}", round(at, 1), round(down, 1))
        w = cluster.workers[i]
        if kind == "sigkill":
            w.kill()
        else:
            w.stop()
        time.sleep(down)
        cluster.start_worker(i).wait_ready(timeout_s=240)
    fault.back_s = round(time.monotonic() - t0, 1)
    print(
        f"  fault {fault.kind} on {fault.target} at {fault.at_s:.0f}s, back at {fault.back_s:.0f}s",
        flush=True,
    )
    return fault


def run_chaos(base: Settings, cfg: ChaosConfig, out: Path | None = None) -> ChaosReport:
    """One chaos run (protocol in the module docstring); returns the report."""
    work = Path(tempfile.mkdtemp(prefix="watchnext-chaos-"))
    settings = base.model_copy(
        update={
            "topic_prefix": f"chaos{cfg.seed}.",
            "app_id": f"watchnext-chaos-{cfg.seed}",
            "partitions": cfg.partitions,
            "metrics_port": 0,
            "snapshot_dir": work / "snapshots",
            "commit_interval_s": 0.5,
        }
    )
    cluster = _Cluster(settings, work, cfg)
    report = ChaosReport(minutes=cfg.minutes)
    try:
        _run(cluster, settings, cfg, report)
    finally:
        for w in cluster.workers:
            w.kill()
        cluster.stop_broker()
        if cfg.keep_dir:
            print(f"chaos: kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_chaos.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        _plot(report, cluster.waits, out / "bench_chaos.png")
    return report


def _plot(report: ChaosReport, waits: list[tuple[float, float]], path: Path) -> None:
    """Request wait against send time, each fault shaded from injection to recovery."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    colors = {"sigkill": "tab:red", "sigterm": "tab:orange", "broker": "tab:purple"}
    for f in report.faults:
        ax.axvspan(f.at_s, f.back_s, color=colors.get(f.kind, "grey"), alpha=0.2)
        ax.text(
            f.at_s,
            0.98,
            f"{f.kind}\n{f.target}",
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=7,
        )
    if waits:
        xs, ys = zip(*waits, strict=True)
        ax.scatter(xs, ys, s=4, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("request sent (s since load start)")
    ax.set_ylabel("wait for the response (s)")
    ax.set_title(
        f"chaos run: {report.events:,} events, {report.requests:,} requests; lost "
        f"{report.lost}, duplicated {report.duplicated}, wrong state {report.wrong_state}, "
        f"unanswered {report.requests_unanswered}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run(cluster: _Cluster, settings: Settings, cfg: ChaosConfig, report: ChaosReport) -> None:
    from model.synth import SynthConfig
    from stream.topics import create_topics
    from watchnext.train import run_train_synthetic

    print("chaos: training a small snapshot pair", flush=True)
    world = SynthConfig(seed=cfg.seed, n_users=300, n_items=400, n_topics=8, sessions_per_user=6)
    run_train_synthetic(world, settings.snapshot_dir, epochs=1, progress=False)
    cluster.start_broker(fresh=True)
    create_topics(settings, cluster.bootstrap)
    print(
        f"chaos: broker {cluster.bootstrap}, {cfg.workers} workers, {cfg.partitions} partitions",
        flush=True,
    )
    for i in range(cfg.workers):
        cluster.start_worker(i)
    for w in cluster.workers:
        w.wait_ready(timeout_s=240)
        w.wait_serving()
    events = _EventLoad(settings, cluster.bootstrap, cfg)
    responses = _Responses(settings, cluster.bootstrap)
    requests = _RequestLoad(settings, cluster.bootstrap, cfg, responses.seen)
    rng = random.Random(cfg.seed)
    kinds = iter(_schedule(cfg, rng))
    t0 = time.monotonic()
    cluster.load_started = time.time()
    end = t0 + 60 * cfg.minutes
    for t in (responses, events, requests):
        t.start()
    print(
        f"chaos: load {cfg.event_rate:.0f} events/s + {cfg.request_rate:.0f} requests/s for "
        f"{cfg.minutes:g} min",
        flush=True,
    )
    next_fault = t0 + rng.uniform(*cfg.gap_s)
    while time.monotonic() < end:
        for i in cluster.crashed():  # not ours: a crash; restart it as a supervisor would
            report.worker_crashes += 1
            print(
                f"  worker-{i} exited on its own (code "
                f"{cluster.workers[i].proc.returncode}); restarting",
                flush=True,
            )
            cluster.start_worker(i).wait_ready(timeout_s=240)
        kind = next(kinds, None) if time.monotonic() >= next_fault else None
        if kind is not None:
            fault = _inject(cluster, kind, rng, t0)
            report.faults.append(fault)
            next_fault = time.monotonic() + rng.uniform(*cfg.gap_s)
        time.sleep(0.2)
    print("chaos: load stopped; draining", flush=True)
    drain_started = time.monotonic()
    events.stop.set()
    requests.stop.set()
    events.join(180)
    if events.error is not None:
        raise RuntimeError("the event load failed") from events.error
    report.not_drained = _drain(cluster, settings, cfg, requests, responses)
    if requests.error is not None:
        raise RuntimeError("the request load failed") from requests.error
    report.drain_s = round(time.monotonic() - drain_started, 1)
    responses.stop.set()
    responses.join(10)
    for w in cluster.workers:
        code = w.stop()
        if code != 0:
            report.worker_crashes += 1
    _account(cluster, settings, events, requests, responses, report)


def _drain(
    cluster: _Cluster,
    settings: Settings,
    cfg: ChaosConfig,
    requests: _RequestLoad,
    responses: _Responses,
) -> str:
    """Wait for the group to commit everything and the responses to arrive; '' when it did,
    else what was still behind (reported, and counted in the exit code)."""
    from stream.events import USER_EVENT_KINDS
    from stream.lag import wait_caught_up

    topics = [settings.topic(k.value) for k in USER_EVENT_KINDS] + [settings.topic("requests")]

    def caught_up() -> str:
        try:
            wait_caught_up(
                settings, cluster.bootstrap, settings.app_id, topics, timeout_s=cfg.drain_s
            )
        except TimeoutError as exc:
            print(f"chaos: {exc}", flush=True)
            return str(exc)
        return ""

    behind = caught_up()
    # the client keeps re-sending what stays unanswered; give it two retry rounds (without
    # re-sends the group has drained: answers still in flight arrive within seconds)
    deadline = time.monotonic() + (2 * cfg.retry_after_s + 30 if cfg.client_resend else 30)
    while time.monotonic() < deadline and requests.unanswered():
        time.sleep(0.5)
    requests.finish.set()
    requests.join(60)
    # answers to re-sent requests recorded impressions: let the group apply them too
    return caught_up() or behind


def _account(
    cluster: _Cluster,
    settings: Settings,
    events: _EventLoad,
    requests: _RequestLoad,
    responses: _Responses,
    report: ChaosReport,
) -> None:
    from stream.consistency import discrepancies, recompute
    from stream.readback import read_changelog, read_user_events
    from stream.state import Limits

    limits = Limits.of(settings)
    stored = read_user_events(settings, cluster.bootstrap)
    in_topics = {ev.event_id for _, ev in stored}
    missing = {ev.event_id for _, ev in events.acked} - in_topics
    found = discrepancies(read_changelog(settings, cluster.bootstrap), recompute(stored, limits))
    report.events = len({ev.event_id for _, ev in events.acked})
    report.events_in_topics = len(stored)
    report.acked_events_missing_from_topics = len(missing)
    report.lost = found.lost + len(missing)
    report.duplicated = found.duplicated
    report.wrong_state = found.wrong_state
    report.users_checked = found.users
    report.examples = found.examples
    report.kills = sum(f.kind == "sigkill" for f in report.faults)
    report.sigterms = sum(f.kind == "sigterm" for f in report.faults)
    report.broker_restarts = sum(f.kind == "broker" for f in report.faults)
    report.requests = len(requests.sent)
    waits = []
    for rid, sent in requests.sent.items():
        got = responses.seen.get(rid)
        if got is None:
            report.requests_unanswered += 1
            continue
        waits.append(max(got[0] - sent, 0.0))
        cluster.waits.append((sent - cluster.load_started, waits[-1]))
        report.requests_errors += bool(got[1].error)
    _fault_windows(report.faults, cluster.waits)
    report.requests_retried = len(requests.retried & set(responses.seen))
    report.requests_slow = sum(w > cluster.cfg.slow_request_s for w in waits)
    if waits:
        waits.sort()
        report.request_p50_ms = round(1000 * waits[len(waits) // 2], 1)
        report.request_p99_ms = round(1000 * waits[min(len(waits) - 1, int(0.99 * len(waits)))], 1)
        report.request_max_ms = round(1000 * waits[-1], 1)


def _fault_windows(faults: list[Fault], waits: list[tuple[float, float]]) -> None:
    """Set each fault's ``max_wait_s`` from (sent, wait) pairs, times from the load's start."""
    starts = [f.at_s - 1.0 for f in faults] + [float("inf")]
    for fault, start, end in zip(faults, starts, starts[1:], strict=False):
        inside = [w for sent, w in waits if start <= sent < end]
        fault.max_wait_s = round(max(inside, default=0.0), 2)


def run_chaos_bench(base: Settings, cfg: ChaosConfig, out: Path | None, as_json: bool) -> int:
    """CLI entry: run, print a table (and JSON); exit 1 when anything was lost or wrong."""
    report = run_chaos(base, cfg, out)
    rows = [
        ("events acknowledged", report.events),
        (
            "faults: SIGKILL / SIGTERM / broker restarts",
            f"{report.kills} / {report.sigterms} / {report.broker_restarts}",
        ),
        ("worker crashes (not injected)", report.worker_crashes),
        (
            "lost / duplicated / wrong state",
            f"{report.lost} / {report.duplicated} / {report.wrong_state}",
        ),
        ("users checked", report.users_checked),
        (
            "requests / unanswered / errors",
            f"{report.requests} / {report.requests_unanswered} / {report.requests_errors}",
        ),
        (
            f"requests answered only after a re-send ({cfg.retry_after_s:.0f}s)",
            report.requests_retried,
        ),
        (
            "request wait p50 / p99 / max (ms)",
            f"{report.request_p50_ms} / {report.request_p99_ms} / {report.request_max_ms}",
        ),
        (f"requests slower than {cfg.slow_request_s:.0f}s", report.requests_slow),
        ("drain (s)", report.drain_s),
    ]
    for name, value in rows:
        print(f"  {name:<46} {value}")
    for f in report.faults:
        print(
            f"  fault {f.kind:<7} {f.target:<8} at {f.at_s:6.1f}s  down {f.down_s:4.1f}s"
            f"  back {f.back_s:6.1f}s  longest request wait {f.max_wait_s:5.1f}s"
        )
    for e in report.examples:
        print(f"  example: {e}")
    if as_json:
        print(json.dumps(asdict(report)))
    bad = (
        report.lost
        or report.duplicated
        or report.wrong_state
        or report.requests_unanswered
        or report.not_drained
    )
    return 1 if bad else 0
