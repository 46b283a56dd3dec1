"""Snapshot contract: round trip gives identical scores; corrupt, tampered, partial refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.candidate_snapshot import export_candidates, load_candidates
from model.evaluate_candidates import user_context
from model.protocol import split_test_validation
from model.snapshot import SnapshotError, load_snapshot
from model.train_candidate import TrainConfig, fit, score_users
from tests.mldata import random_movielens


@pytest.fixture(scope="module")
def trained_and_split():
    data = random_movielens(seed=3, n=4000, users=59, items=299, seconds=2000)
    test, _ = split_test_validation(data)
    cfg = TrainConfig(epochs=2, loss="sampled", negatives=64, seed=1)
    trained = fit(test.timelines, user_context(data), {"depth": 1, "width_factor": 0.125}, cfg)
    return trained, test, cfg


def test_round_trip_gives_identical_scores(trained_and_split, tmp_path: Path) -> None:
    trained, test, cfg = trained_and_split
    path = export_candidates(trained, tmp_path, cfg, {"HR10": 0.1}, version="v1")
    loaded, snap = load_candidates(path)
    users = sorted(test.targets)
    a, ids_a = score_users(trained, test.timelines, users, cfg)
    loaded.context = trained.context  # demographics come from live profiles at serving
    b, ids_b = score_users(loaded, test.timelines, users, cfg)
    assert np.array_equal(ids_a, ids_b) and np.array_equal(a, b)
    assert snap.version == "v1" and snap.meta["metrics"]["HR10"] == 0.1
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written is left behind


def test_deterministic_under_a_seed(trained_and_split) -> None:
    trained, test, cfg = trained_and_split
    again = fit(test.timelines, trained.context, {"depth": 1, "width_factor": 0.125}, cfg)
    users = sorted(test.targets)
    assert np.array_equal(
        score_users(trained, test.timelines, users, cfg)[0],
        score_users(again, test.timelines, users, cfg)[0],
    )


def test_tampered_partial_and_wrong_kind_are_refused(trained_and_split, tmp_path: Path) -> None:
    trained, _, cfg = trained_and_split
    good = export_candidates(trained, tmp_path, cfg, {}, version="v2")
    meta = good / "meta.json"
    doc = json.loads(meta.read_text())
    doc["items"] = list(reversed(doc["items"]))
    meta.write_text(json.dumps(doc))
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        load_snapshot(good)
    partial = export_candidates(trained, tmp_path, cfg, {}, version="v3")
    (partial / "weights.safetensors").unlink()
    with pytest.raises(SnapshotError, match="missing"):
        load_snapshot(partial)
    with pytest.raises(SnapshotError, match=r"no manifest\.json"):
        load_snapshot(tmp_path)
    third = export_candidates(trained, tmp_path, cfg, {}, version="v4")
    with pytest.raises(SnapshotError, match="expected 'ranker'"):
        load_snapshot(third, kind="ranker")
    with pytest.raises(SnapshotError, match="immutable"):
        export_candidates(trained, tmp_path, cfg, {}, version="v4")


def test_prebuilt_index_travels_checksummed(trained_and_split, tmp_path: Path) -> None:
    """The trainer ships the ANN index inside the snapshot; a flipped byte in it is refused,
    and a manifest that smuggles a path outside the directory is refused before any read."""
    from serving.index import INDEX_FILE
    from serving.recommend import index_extras

    trained, _, cfg = trained_and_split
    path = export_candidates(trained, tmp_path, cfg, {}, "v5", extras=index_extras(trained))
    snap = load_snapshot(path)
    assert INDEX_FILE in snap.extras and len(snap.extras[INDEX_FILE]) > 0
    blob = bytearray((path / INDEX_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (path / INDEX_FILE).write_bytes(bytes(blob))
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        load_snapshot(path)
    other = export_candidates(trained, tmp_path, cfg, {}, "v6")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["files"]["../escape"] = {"sha256": "0", "bytes": 1}
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="invalid file list"):
        load_snapshot(other)
