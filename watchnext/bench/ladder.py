"""Open-loop request phases of ``bench serve``: one rate, a ladder of rates, the saturation point.

A phase: a reader thread of the benchmark process subscribes to the response topic and only
timestamps each response on arrival; the request generator (a process of its own,
:mod:`watchnext.bench.loadgen_procs`) sends at the phase's rate; optionally the event generator
runs at the same time (the mixed-load phase). End-to-end = arrival − send time (one wall clock),
compute = the worker's own ``compute`` stage latency from the response.

The ladder offers rising rates, one phase each; the saturation point is the highest offered
rate the worker answered at ≥ 95 % of, with an end-to-end p99 ≤ 30 ms.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from stream.events import RecommendationResponse
from watchnext.bench.loadgen_procs import (
    LEAD_S,
    EventLoad,
    Generators,
    RequestLoad,
    paced_events,
    paced_requests,
    percentile_ms,
)
from watchnext.settings import Settings

SATURATION_ACHIEVED = 0.95  # answered at least this share of the offered rate ...
SATURATION_P99_MS = 30.0  # ... with an end-to-end p99 at most this
DRAIN_S = 30.0  # how long a phase waits for its last responses


class ResponseReader(threading.Thread):
    """Arrival time and content of every response published after it started."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(
            settings.topic("responses"),
            bootstrap_servers=bootstrap,
            auto_offset_reset="latest",
            group_id=None,
            fetch_max_wait_ms=20,
            **settings.kafka_client_config(),
        )
        self.consumer.poll(timeout_ms=500)
        self.arrived: dict[str, tuple[float, RecommendationResponse]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for records in self.consumer.poll(timeout_ms=50).values():
                now = time.time()
                for msg in records:
                    resp = RecommendationResponse.model_validate_json(msg.value)
                    self.arrived.setdefault(resp.request_id, (now, resp))
        self.consumer.close()


STAGES = ("vector", "retrieve", "i2i", "merge", "rank", "compute")


def summarize(sent: dict[str, Any], arrived: dict[str, tuple[float, Any]]) -> dict[str, Any]:
    """Latency and throughput of one phase from the generator's summary and the arrivals."""
    times: dict[str, float] = sent["sent"]
    start = sent["start_at"]
    got = [(arrived[r], t) for r, t in times.items() if r in arrived]
    e2e = [arr - t for (arr, _), t in got]
    compute = [resp.latency_ms.get("compute", float("nan")) / 1000 for (_, resp), _ in got]
    last = max((arr for (arr, _), _ in got), default=start)
    return {
        "requests": len(times),
        "answered": len(got),
        "errors": sum(1 for (_, resp), _ in got if resp.error),
        "offered_rps": round(len(times) / max(sent["flushed_at"] - start, 1e-9), 1),
        "achieved_rps": round(len(got) / max(last - start, 1e-9), 1),
        "p50_ms": percentile_ms(e2e, 50),
        "p99_ms": percentile_ms(e2e, 99),
        "compute_p50_ms": percentile_ms(compute, 50, 3),
        "compute_p99_ms": percentile_ms(compute, 99, 3),
        # each stage of the request path as the worker measured it (ms, median over requests)
        "stage_p50_ms": {
            stage: percentile_ms([resp.latency_ms[stage] / 1000 for (_, resp), _ in got], 50, 3)
            for stage in STAGES
            if got and all(stage in resp.latency_ms for (_, resp), _ in got)
        },
        "request_generator_max_lag_ms": sent["max_lag_ms"],
    }


def request_phase(
    settings: Settings,
    bootstrap: str,
    gens: Generators,
    *,
    users: int,
    rate: float,
    seconds: float,
    prefix: str,
    events: EventLoad | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Requests at ``rate``/s for ``seconds`` (and ``events`` at the same time, if given).

    Returns the request summary and the event generator's summary (None without events).
    """
    reader = ResponseReader(settings, bootstrap)
    reader.start()
    try:
        start_at = time.time() + LEAD_S
        load = RequestLoad(settings, bootstrap, rate, seconds, users, prefix, start_at=start_at)
        requests = gens.submit(paced_requests, load)
        ev: Future[dict[str, Any]] | None = None
        if events is not None:
            ev = gens.submit(paced_events, replace(events, start_at=start_at))
        sent = requests.result()
        deadline = time.time() + DRAIN_S
        while time.time() < deadline and not set(sent["sent"]) <= set(reader.arrived):
            time.sleep(0.1)
        ev_summary = ev.result() if ev is not None else None
    finally:
        reader.stop.set()
        reader.join(5)
    return summarize(sent, reader.arrived), ev_summary


def run_ladder(
    settings: Settings,
    bootstrap: str,
    gens: Generators,
    *,
    users: int,
    rates: Sequence[float],
    seconds: float,
) -> list[dict[str, Any]]:
    """One request phase per rate, in the given order; a row per step.

    In a row, ``offered_rps`` is the step's scheduled rate and ``sent_rps`` the rate the
    generator actually sent at (elsewhere ``offered_rps`` is the latter).
    """
    rows = []
    for step, rate in enumerate(rates):
        phase, _ = request_phase(
            settings,
            bootstrap,
            gens,
            users=users,
            rate=rate,
            seconds=seconds,
            prefix=f"ladder{step}",
        )
        row = {
            "offered_rps": rate,
            "sent_rps": phase["offered_rps"],
            "achieved_rps": phase["achieved_rps"],
            "answered": phase["answered"],
            "requests": phase["requests"],
            "errors": phase["errors"],
            "p50_ms": phase["p50_ms"],
            "p99_ms": phase["p99_ms"],
            "compute_p99_ms": phase["compute_p99_ms"],
            "request_generator_max_lag_ms": phase["request_generator_max_lag_ms"],
        }
        print(f"  ladder {rate:g}/s: {row}", flush=True)
        rows.append(row)
    return rows


def saturation_rps(rows: Sequence[dict[str, Any]]) -> float | None:
    """The highest offered rate answered at ≥ 95 % of it with p99 ≤ 30 ms; None if none was."""
    ok = [
        r["offered_rps"]
        for r in rows
        if r["achieved_rps"] >= SATURATION_ACHIEVED * r["offered_rps"]
        and r["p99_ms"] is not None
        and r["p99_ms"] <= SATURATION_P99_MS
    ]
    return max(ok, default=None)
