"""The load generators of ``bench serve``, each in a process of its own.

A generator must never be the bottleneck, and its own cost must not be counted as the worker's.
So the paced watch events and the paced requests are each sent by a process of their own (its
own interpreter and GIL), apart from each other and from the benchmark process, whose response
reader only timestamps arrivals. Schedules are open-loop: record ``i`` is due at
``start_at + i / rate`` on the wall clock every process of the machine shares; a generator that
falls behind sends at once to catch up, and reports how far behind it fell (``max_lag_ms``: the
largest send time minus due time), so a reader can tell whether it kept up.

The event producer batches a little (``linger_ms`` 5). Each event's record gets its Kafka
timestamp when it is sent (kafka-python sets it in ``send``), and the worker's event→vector
clock starts there, so that figure includes the producer's linger, the network and the broker.
The generator therefore also reports its own create→ack latency (send to the broker's
acknowledgement, timed when kafka-python's delivery callback fires), to be read beside it.
"""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from stream.events import EventKind, RecommendationRequest, WatchEvent
from watchnext.settings import Settings

LEAD_S = 3.0  # from starting a generator to its first due time: to import, connect, warm up


@dataclass(frozen=True)
class EventLoad:
    """Watch events for users ``0..users-1`` at ``rate``/s for ``seconds``; ids ``{prefix}-i``."""

    settings: Settings
    bootstrap: str
    rate: float
    seconds: float
    users: int
    items: tuple[int, ...]
    prefix: str
    start_at: float = 0.0
    linger_ms: int = 5


@dataclass(frozen=True)
class RequestLoad:
    """Requests for random users at ``rate``/s for ``seconds``; request ids ``{prefix}-i``."""

    settings: Settings
    bootstrap: str
    rate: float
    seconds: float
    users: int
    prefix: str
    start_at: float = 0.0
    seed: int = 7
    linger_ms: int = 0


def watch_record(
    user_id: int, event_id: str, item_id: int, ts: float
) -> tuple[EventKind, bytes, bytes]:
    """One valid watch event as (kind, key, value)."""
    ev = WatchEvent(
        event_id=event_id,
        user_id=user_id,
        item_id=item_id,
        ts=ts,
        watch_seconds=120.0,
        item_duration_seconds=600.0,
        device="web",
    )
    return EventKind.WATCH, str(user_id).encode(), ev.to_json()


def percentile_ms(values_s: list[float], q: float, digits: int = 2) -> float | None:
    """The ``q``-th percentile (0-100) of durations in seconds, in ms; None for no values."""
    if not values_s:
        return None
    import numpy as np

    return round(1000 * float(np.percentile(values_s, q)), digits)


def _wait_until(t: float) -> None:
    pause = t - time.time()
    if pause > 0:
        time.sleep(pause)


def _producer(settings: Settings, bootstrap: str, topic: str, linger_ms: int) -> Any:
    from stream.producer import make_producer

    producer = make_producer(settings, bootstrap, linger_ms=linger_ms)
    producer.partitions_for(topic)  # metadata and connections before the clock starts
    return producer


def paced_events(load: EventLoad) -> dict[str, Any]:
    """Send the events on schedule; the summary of what was sent and how it was acknowledged."""
    topic = load.settings.topic(EventKind.WATCH.value)
    producer = _producer(load.settings, load.bootstrap, topic, load.linger_ms)
    n = int(load.rate * load.seconds)
    created, acked = [0.0] * n, [0.0] * n
    errors: list[BaseException] = []
    lag = 0.0

    def on_ack(i: int, _metadata: Any) -> None:
        acked[i] = time.time()

    _wait_until(load.start_at)
    for i in range(n):
        due = load.start_at + i / load.rate
        _wait_until(due)
        item = load.items[i % len(load.items)]
        _, key, value = watch_record(i % load.users, f"{load.prefix}-{i}", item, time.time())
        now = created[i] = time.time()
        lag = max(lag, now - due)
        fut = producer.send(topic, key=key, value=value)
        fut.add_callback(on_ack, i)
        fut.add_errback(errors.append)
    producer.flush()
    done = time.time()
    producer.close()
    latency = [a - c for a, c in zip(acked, created, strict=True) if a]
    return {
        "sent": n,
        "errors": len(errors),
        "sent_per_s": round(n / max(done - load.start_at, 1e-9), 1),
        "create_to_ack_p50_ms": percentile_ms(latency, 50),
        "create_to_ack_p99_ms": percentile_ms(latency, 99),
        "max_lag_ms": round(1000 * lag, 2),
    }


def paced_requests(load: RequestLoad) -> dict[str, Any]:
    """Send the requests on schedule; their send times by request id, for the reader's match."""
    topic = load.settings.topic("requests")
    producer = _producer(load.settings, load.bootstrap, topic, load.linger_ms)
    rng = random.Random(load.seed)
    n = int(load.rate * load.seconds)
    sent: dict[str, float] = {}
    errors: list[BaseException] = []
    lag = 0.0
    _wait_until(load.start_at)
    for i in range(n):
        due = load.start_at + i / load.rate
        _wait_until(due)
        uid = rng.randrange(load.users)
        req = RecommendationRequest(request_id=f"{load.prefix}-{i}", user_id=uid, k=10)
        value = req.to_json()
        now = sent[req.request_id] = time.time()
        lag = max(lag, now - due)
        producer.send(topic, key=str(uid).encode(), value=value).add_errback(errors.append)
    producer.flush()
    done = time.time()
    producer.close()
    return {
        "sent": sent,
        "errors": len(errors),
        "start_at": load.start_at,
        "flushed_at": done,
        "max_lag_ms": round(1000 * lag, 2),
    }


GENERATORS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "paced_events": paced_events,
    "paced_requests": paced_requests,
}


def _run_child(name: str, load: EventLoad | RequestLoad) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "watchnext.bench.loadgen_procs", name]
    proc = subprocess.run(cmd, input=pickle.dumps(load), capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-3000:]
        raise RuntimeError(f"load generator {name} exited with {proc.returncode}:\n{tail}")
    result: dict[str, Any] = pickle.loads(proc.stdout)
    return result


class Generators:
    """Starts each generator as ``python -m watchnext.bench.loadgen_procs NAME``, a fresh
    interpreter (a subprocess, not multiprocessing: nothing depends on how the benchmark's own
    main module was started); the load goes in on stdin, the summary comes back on stdout.

    Use as a context manager. :meth:`submit` gives a generator its start time
    (``LEAD_S`` from now unless given) and returns the future of its summary.
    """

    def __init__(self) -> None:
        self.waiters = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loadgen")

    def __enter__(self) -> Generators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.waiters.shutdown(wait=True, cancel_futures=True)

    def submit(
        self, fn: Callable[[Any], dict[str, Any]], load: EventLoad | RequestLoad
    ) -> Future[dict[str, Any]]:
        if fn.__name__ not in GENERATORS:
            raise ValueError(f"not a load generator: {fn.__name__}")
        if not load.start_at:
            load = replace(load, start_at=time.time() + LEAD_S)
        return self.waiters.submit(_run_child, fn.__name__, load)


def _main() -> None:
    """Child side: a pickled load on stdin, its pickled summary on stdout."""
    fn = GENERATORS[sys.argv[1]]
    load = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the summary
    pickle.dump(fn(load), out)
    out.flush()


if __name__ == "__main__":
    from watchnext.bench.loadgen_procs import _main as main  # the loads' classes live there

    main()
