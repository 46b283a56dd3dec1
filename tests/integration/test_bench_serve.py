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
}


def test_bench_serve_reports_every_figure(settings, kafka_bootstrap, tmp_path: Path, capsys):
    settings = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap})
    code = run_serve_bench(
        settings, items=60_000, rate=20, seconds=2, users=300, out=tmp_path, as_json=True
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
