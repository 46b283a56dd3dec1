"""Snapshot pairs for tests: one small trained pair, republished under chosen versions/times."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from model.snapshot import MANIFEST
from tests.mldata import write_ratings_csv
from watchnext.train import run_train


def train_small_pair(root: Path, seed: int = 8) -> tuple[Path, Path]:
    """A real candidate + ranker pair trained for one epoch on 30 random users (seconds)."""
    write_ratings_csv(root / "ml", seed=seed, users=30, items=80, per_user=(8, 15))
    pair = run_train(root / "ml", root / "snap", epochs=1)
    assert pair is not None
    return pair


def publish_copy(
    pair: tuple[Path, Path], root: Path, version: str, created: float
) -> dict[str, str]:
    """A copy of ``pair`` as version ``version``, written (manifest and mtime) at ``created``
    (as ``bench swap`` republishes): real, verifiable snapshots in well under a second."""
    versions = {}
    for src in pair:
        kind = src.name.split("-", 1)[0]
        dst = root / f"{kind}-{version}"
        shutil.copytree(src, dst)
        manifest = json.loads((dst / MANIFEST).read_text())
        manifest.update(version=version, created=created)
        (dst / MANIFEST).write_text(json.dumps(manifest))
        os.utime(dst, (created, created))
        versions[kind] = version
    return versions
