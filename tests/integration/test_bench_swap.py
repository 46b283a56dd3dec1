"""``watchnext bench swap`` end to end on the real broker, at a small scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watchnext.bench.swap import run_swap_bench

pytestmark = pytest.mark.integration


def test_bench_swap_reports_every_figure(settings, kafka_bootstrap, tmp_path: Path, capsys):
    settings = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap})
    code = run_swap_bench(
        settings,
        items=60_000,
        rate=10,
        swaps=2,
        steady_s=3,
        gap_s=2,
        users=200,
        as_json=True,
        epochs=1,
    )
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {
        "swaps",
        "failed_requests",
        "steady_p99_ms",
        "swap_p99_ms",
        "announce_to_serve_s",
    } <= set(last)
    assert last["swaps"] == 2 and last["worker_swaps"] == 3  # the first load + two swaps
    assert last["failed_requests"] == 0 and last["requests"] >= 50
    assert 0 < last["announce_to_serve_s"] < 60
    assert last["steady_p99_ms"] > 0 and last["swap_p99_ms"] > 0
