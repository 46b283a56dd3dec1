"""``watchnext bench serve`` end to end on the real broker, at a small scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watchnext.bench.serve import run_serve_bench

pytestmark = pytest.mark.integration

KEYS = {
    "p50_ms",
    "p99_ms",
    "offered_rps",
    "achieved_rps",
    "compute_p99_ms",
    "recall_at_100",
    "events_per_s_with_refresh",
    "event_to_vector_p99_ms",
    "ladder",
    "saturation_rps",
    "mixed",
    "producer_create_to_ack_p50_ms",
    "producer_create_to_ack_p99_ms",
    "event_generator_max_lag_ms",
    "request_generator_max_lag_ms",
}
LADDER = (20, 40)
MIXED_KEYS = {
    "events_per_s_offered",
    "requests_per_s_offered",
    "event_to_vector_p50_ms",
    "event_to_vector_p99_ms",
    "request_p50_ms",
    "request_p99_ms",
    "achieved_rps",
    "producer_create_to_ack_p99_ms",
    "event_generator_max_lag_ms",
    "request_generator_max_lag_ms",
}


def test_bench_serve_reports_every_figure(settings, kafka_bootstrap, tmp_path: Path, capsys):
    settings = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap})
    code = run_serve_bench(
        settings,
        items=60_000,
        rate=20,
        seconds=2,
        users=300,
        out=tmp_path,
        as_json=True,
        ladder=LADDER,
        ladder_seconds=1,
        paced_events_per_s=500,
        paced_seconds=2,
        mixed_requests_per_s=20,
        mixed_seconds=2,
        epochs=1,  # the figures are reported whatever the model's quality
    )
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) >= KEYS
    assert last["items"] == 60_000 and last["answered"] == last["requests"] == 40
    assert last["errors"] == 0 and last["half_rate"]["answered"] == 20
    assert 0.9 <= last["recall_at_100"] <= 1.0  # IVF (60k > exact limit) against exact
    assert last["vectors_refreshed"] >= last["users"]  # every user changed, every one refreshed
    assert last["p99_ms"] >= last["p50_ms"] > 0 and last["compute_p99_ms"] > 0
    assert (tmp_path / "bench_serve_ann.png").stat().st_size > 0

    assert [row["offered_rps"] for row in last["ladder"]] == list(LADDER)
    for row in last["ladder"]:
        assert 0 < row["achieved_rps"] <= 1.1 * row["offered_rps"], row
        assert row["answered"] == row["requests"] == row["offered_rps"] and row["errors"] == 0
        assert row["p99_ms"] >= row["p50_ms"] > 0 and row["compute_p99_ms"] > 0
    assert last["saturation_rps"] is None or last["saturation_rps"] in LADDER

    mixed = last["mixed"]
    assert set(mixed) >= MIXED_KEYS
    assert mixed["answered"] == mixed["requests"] == 40 and mixed["errors"] == 0
    assert mixed["event_to_vector_p99_ms"] >= mixed["event_to_vector_p50_ms"] > 0
    assert mixed["request_p99_ms"] >= mixed["request_p50_ms"] > 0
    assert 0 < mixed["achieved_rps"] <= 1.1 * mixed["requests_per_s_offered"]
    for figures in (last, mixed):  # the producer's own share, and generators that kept up
        assert figures["producer_create_to_ack_p99_ms"] >= figures["producer_create_to_ack_p50_ms"]
        assert figures["producer_create_to_ack_p50_ms"] > 0
        assert figures["event_generator_max_lag_ms"] >= 0
        assert figures["request_generator_max_lag_ms"] >= 0
