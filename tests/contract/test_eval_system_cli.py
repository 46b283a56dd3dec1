"""``watchnext eval system --json`` on a small ratings.csv: the output contract, end to end."""

from __future__ import annotations

from pathlib import Path

from tests.cli import last_json, watchnext
from tests.mldata import write_ratings_csv


def test_eval_system_json_contract(tmp_path: Path) -> None:
    write_ratings_csv(tmp_path / "ml", seed=5, users=60, items=120, per_user=(8, 20))
    out = watchnext(
        "eval", "system", "--data", str(tmp_path / "ml"), "--seeds", "1", "--epochs", "2",
        "--out", str(tmp_path / "results"), "--json", timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = last_json(out)
    models = result["models"]
    served, faithful = result["served"], result["paper_faithful"]
    assert {served, faithful, result["project_best"], "MostPop", "ItemKNN", "EASE"} <= set(models)
    assert {"source:candidates", "source:i2i"} <= set(models)  # each source alone, as served
    for name in (served, faithful, "source:candidates", "source:i2i"):
        for k in ("HR10", "NDCG10", "R50", "R100"):
            assert 0.0 <= models[name][k] <= 1.0, (name, k)
    # the served list never holds an item the user watched (no history here outlives the filter)
    assert models[served]["repeat_share"] == 0.0
    # a blend of two sources ranked by the ranker reaches more targets in its top 100 than
    # the item-to-item source alone (which nominates at most 100 items)
    assert models[served]["R100"] >= models["source:i2i"]["R100"] - 0.05
    assert result["peak_rss_mb"] > 0
    assert (tmp_path / "results" / "system_ml100k.json").exists()
    assert (tmp_path / "results" / "system_ml100k.png").stat().st_size > 1000


def test_eval_system_on_the_validation_split_writes_nothing(tmp_path: Path) -> None:
    write_ratings_csv(tmp_path / "ml", seed=6, users=50, items=100, per_user=(8, 16))
    out = watchnext(
        "eval", "system", "--data", str(tmp_path / "ml"), "--seeds", "1", "--epochs", "1",
        "--validation", "--negatives", "5", "--ranker-min-count", "2",
        "--generator", "watchnext-sequence",
        "--out", str(tmp_path / "results"), "--json", timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = last_json(out)
    assert result["split"] == "validation" and "VALIDATION" in result["data"]
    # the sequence-aware generator, exported and served through the worker's loader
    assert result["generator"] == "watchnext-sequence" and "watchnext-sequence" in result["models"]
    assert 0.0 < result["models"]["source:candidates"]["R100"] <= 1.0
    assert result["negatives"] == 5 and result["ranker_min_item_count"] == 2
    assert result["served"] in result["models"]
    assert not (tmp_path / "results").exists()  # choices are made here, never published


def test_eval_system_refuses_an_unknown_generator(tmp_path: Path) -> None:
    out = watchnext("eval", "system", "--generator", "nope", "--seeds", "1", timeout=120)
    assert out.returncode != 0 and "unknown --generator nope" in out.stderr
