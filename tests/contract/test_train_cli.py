"""``watchnext train`` writes two verifiable snapshots that load and score."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.candidate_snapshot import load_candidates
from model.ranker_snapshot import load_ranker
from model.ranking_features import Candidate, impression_features
from tests.cli import watchnext
from tests.mldata import write_ratings_csv


def test_train_cli_writes_loadable_snapshots(tmp_path: Path) -> None:
    write_ratings_csv(tmp_path, seed=8, users=30, items=80, per_user=(8, 16))
    out = watchnext(
        "train",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "snap"),
        "--epochs",
        "2",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (cand_dir,) = (tmp_path / "snap").glob("candidates-*")
    (rank_dir,) = (tmp_path / "snap").glob("ranker-*")
    cands, _ = load_candidates(cand_dir)
    ranker, snap = load_ranker(rank_dir)
    assert "validation" in snap.meta["metrics"]
    f = impression_features(
        None, [Candidate(i, "candidate", 0.1) for i in cands.items.ids[:5]], {}, 0.0
    )
    scores = ranker.expected_watch_seconds([f])
    assert scores.shape == (5,) and np.isfinite(scores).all() and (scores > 0).all()
