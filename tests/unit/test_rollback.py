"""Announcements move workers forward; going back takes ``rollback``, and a poll never undoes it.

Pairs are copies of one trained pair under new versions with chosen creation times (as
``bench swap`` republishes), so each test loads real, verified snapshots in well under a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from model.snapshot import MANIFEST, snapshot_created
from stream.announce import Announcement, announcement, parse
from stream.live_models import Serving
from tests.snapshotkit import publish_copy, train_small_pair
from watchnext.settings import Settings


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_small_pair(tmp_path_factory.mktemp("rollback"))


def _refused(reason: str) -> float:
    value = REGISTRY.get_sample_value("watchnext_announcements_refused_total", {"reason": reason})
    return value or 0.0


def _served(serving: Serving) -> str:
    return serving.recommender.models.versions["candidates"]


@pytest.fixture
def world(tmp_path: Path, trained_pair: tuple[Path, Path]):
    root = tmp_path / "snap"
    root.mkdir()
    old = publish_copy(trained_pair, root, "a-old", 1_000_000.0)
    new = publish_copy(trained_pair, root, "b-new", 2_000_000.0)
    serving = Serving(Settings(snapshot_dir=root, data_dir=tmp_path / "w"), retry_s=0.0)
    assert serving.check() is True and _served(serving) == "b-new"  # the poll takes the newest
    return serving, root, trained_pair, old, new


def test_created_is_recorded_and_old_manifests_fall_back_to_mtime(world) -> None:
    _, root, *_ = world
    assert snapshot_created(root / "candidates-b-new") == 2_000_000.0
    path = root / "ranker-a-old"
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["created"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    os.utime(path, (1234.0, 1234.0))
    assert snapshot_created(path) == 1234.0


def test_an_older_pair_is_refused_without_the_rollback_flag(world) -> None:
    serving, _, _, old, _ = world
    before = _refused("older")
    serving.notify(parse(announcement(old)))
    assert serving.check() is False and _served(serving) == "b-new"
    assert _refused("older") == before + 1


def test_rollback_swaps_back_and_the_poll_does_not_undo_it(world) -> None:
    serving, root, pair, old, _ = world
    serving.notify(parse(announcement(old, rollback=True)))
    assert serving.check() is True and _served(serving) == "a-old"
    assert serving.check() is False and _served(serving) == "a-old"  # newest on disk: b-new
    publish_copy(pair, root, "c-newer", 3_000_000.0)  # even a newer, unannounced pair waits
    assert serving.check() is False and _served(serving) == "a-old"


def test_a_newer_announcement_after_a_rollback_moves_forward_and_resumes_polling(world) -> None:
    serving, root, pair, old, new = world
    serving.notify(Announcement(old, rollback=True))
    assert serving.check() is True and _served(serving) == "a-old"
    serving.notify(parse(announcement(new)))  # the pair rolled back from, announced again
    assert serving.check() is True and _served(serving) == "b-new"
    publish_copy(pair, root, "c-newer", 3_000_000.0)
    assert serving.check() is True and _served(serving) == "c-newer"  # polling again


def test_an_equally_old_copy_is_not_a_rollback(world) -> None:
    """``bench swap`` republishes the served pair under a new version: same creation time."""
    serving, root, pair, _, _ = world
    same = publish_copy(pair, root, "b-copy", 2_000_000.0)
    serving.notify(same)
    assert serving.check() is True and _served(serving) == "b-copy"


def test_an_announced_symlinked_pair_is_not_followed(world, tmp_path: Path) -> None:
    serving, root, pair, _, _ = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    publish_copy(pair, elsewhere, "d-link", 4_000_000.0)
    for kind in ("candidates", "ranker"):
        (root / f"{kind}-d-link").symlink_to(elsewhere / f"{kind}-d-link")
    before = _refused("incomplete")
    serving.notify({"candidates": "d-link", "ranker": "d-link"})
    assert serving.check() is False and _served(serving) == "b-new"
    assert _refused("incomplete") == before + 1
