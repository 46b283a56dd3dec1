"""``watchnext eval candidates --json`` on a small ratings.csv: the output contract."""

from __future__ import annotations

from pathlib import Path

from tests.cli import eval_candidates_json
from tests.mldata import write_ratings_csv


def test_eval_candidates_json_contract(tmp_path: Path) -> None:
    write_ratings_csv(tmp_path, seed=5, users=40, items=120, per_user=(8, 20), stagger_users=False)
    out, result = eval_candidates_json(tmp_path, 2, 2, "--depth", "1")
    assert result["paper_faithful"] in result["models"]
    assert result["project_best"] in result["models"]
    assert {"MostPop", "ItemKNN", "EASE"} <= set(result["models"])
    assert result["paper_faithful"] != result["project_best"]
    for name in (result["paper_faithful"], result["project_best"]):
        ours = result["models"][name]
        for k in ("HR10", "NDCG10", "R50", "R100"):
            assert 0.0 <= ours[k] <= 1.0 and f"{k}_std" in ours and f"{k}_median" in ours
    assert "ratings.csv" in out.stdout
