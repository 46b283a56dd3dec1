"""``bench fresh`` on the real broker (issue 17): new uploads reach answers through the
freshness overlay, with no retrain and no item in the index, and the figure is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.streamkit import with_snapshots
from watchnext.bench.fresh import run_fresh_bench

pytestmark = pytest.mark.integration


def test_new_uploads_are_answered_without_a_retrain(settings, kafka_bootstrap, tmp_path) -> None:
    settings = with_snapshots(
        settings, kafka_bootstrap, tmp_path, seed=6, users=40, items=60, per_user=(10, 20), epochs=2
    )
    settings = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap})
    result = run_fresh_bench(
        settings,
        items=3,
        watchers=3,
        history=6,
        snapshots=settings.snapshot_dir,
        out=tmp_path,
        timeout_s=30,
    )
    assert len(result["per_item"]) == 3
    assert all(p["upload_to_retrievable_s"] > 0 for p in result["per_item"])
    assert result["upload_to_retrievable_s"] <= result["upload_to_retrievable_max_s"] < 60
    assert result["overlay_items"] == 3  # every new item, none in the index
    assert result["fresh_watches_sent"] == 9  # 3 watchers × 3 items, published once each
    assert (Path(tmp_path) / "bench_fresh.json").is_file()
