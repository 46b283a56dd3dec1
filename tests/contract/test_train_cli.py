"""``watchnext train`` writes two verifiable snapshots that load and score."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from model.candidate_snapshot import load_candidates
from model.ranker_snapshot import load_ranker
from model.ranking_features import Candidate, impression_features


def test_train_cli_writes_loadable_snapshots(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, 31):
        for k in range(int(rng.integers(8, 16))):
            rows.append(f"{u},{rng.integers(1, 80)},{rng.integers(1, 6)},{1000 + 10 * k + u}")
    (tmp_path / "ratings.csv").write_text("\n".join(rows) + "\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "watchnext",
            "train",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "snap"),
            "--epochs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
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
