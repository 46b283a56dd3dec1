"""Snapshot retention, pins, leases and the ``watchnext snapshots`` commands: nothing in use,
pinned or canaried is ever deleted; everything else beyond the newest N is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from model import snapshot_store as store
from stream.live_models import Serving
from tests.snapshotkit import publish_copy, train_small_pair
from watchnext.cli import main
from watchnext.settings import Settings


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_small_pair(tmp_path_factory.mktemp("lifecycle"))


@pytest.fixture
def root(tmp_path: Path, trained_pair: tuple[Path, Path]) -> Path:
    """Six pairs v1 (oldest) .. v6 (newest)."""
    root = tmp_path / "snap"
    root.mkdir()
    for n in range(1, 7):
        publish_copy(trained_pair, root, f"v{n}", 1_000_000.0 + n)
    return root


def _versions(root: Path, kind: str = "candidates") -> list[str]:
    return [s.version for s in store.stored(root) if s.kind == kind]


def test_retention_keeps_the_newest_the_pinned_the_served_and_the_canaries(root: Path) -> None:
    now = 5_000_000.0
    store.pin(root, "v1", "incident 42")
    store.write_lease(root, "w0", {"candidates": "v2", "ranker": "v2"}, now=now - 10)
    store.write_lease(
        root, "w1", {"candidates": "v5", "ranker": "v5"}, {"candidates": "v3"}, now=now
    )
    store.write_lease(root, "dead", {"candidates": "v4", "ranker": "v4"}, now=now - 3600)
    deleted = store.retain(root, keep=2, lease_s=600, now=now)
    # v6, v5: newest two; v1 pinned; v2 served by w0; v3 canary of w1 (candidates only);
    # v4: only a lease that expired an hour ago names it
    assert sorted((s.kind, s.version) for s in deleted) == [
        ("candidates", "v4"),
        ("ranker", "v3"),
        ("ranker", "v4"),
    ]
    assert _versions(root) == ["v6", "v5", "v3", "v2", "v1"]
    assert _versions(root, "ranker") == ["v6", "v5", "v2", "v1"]
    assert not list(root.glob(".deleting-*"))  # renamed away, then removed entirely
    listed = {(s.kind, s.version): s for s in store.stored(root, 600, now)}
    assert listed["candidates", "v1"].pinned == "incident 42"
    assert listed["candidates", "v2"].served_by == ["w0"]
    assert listed["candidates", "v3"].canary_of == ["w1"]
    assert store.unpin(root, "v1") and not store.unpin(root, "v1")
    store.retain(root, keep=2, lease_s=600, now=now)
    assert "v1" not in _versions(root)


def test_retention_never_goes_below_one_and_refuses_paths_as_versions(root: Path) -> None:
    with pytest.raises(ValueError):
        store.retain(root, keep=0)
    for bad in ("../v1", "v1/x", ".hidden", ""):
        with pytest.raises(ValueError):
            store.pin(root, bad)
    assert not (root.parent / "v1").exists()


def test_a_worker_leases_what_it_serves_and_retention_keeps_it(
    tmp_path: Path, trained_pair: tuple[Path, Path]
) -> None:
    """The served pair survives retention with keep=1 after newer pairs appear; once the worker
    has moved on (and its lease says so), the old pair goes."""
    root = tmp_path / "snap"
    root.mkdir()
    publish_copy(trained_pair, root, "old", 1_000_000.0)
    serving = Serving(Settings(snapshot_dir=root, data_dir=tmp_path / "w"), retry_s=0.0)
    assert serving.check() is True
    lease = json.loads((root / store.LEASES / f"{serving.worker}.json").read_text())
    assert lease["versions"] == {"candidates": "old", "ranker": "old"}
    age = REGISTRY.get_sample_value("watchnext_snapshot_age_seconds", {"kind": "candidates"})
    assert age is not None and age > 1e9  # created in 1970 + 11 days, measured at scrape
    publish_copy(trained_pair, root, "new1", 2_000_000.0)
    publish_copy(trained_pair, root, "new2", 3_000_000.0)
    store.retain(root, keep=1)
    assert _versions(root) == ["new2", "old"]  # new1 deleted; old is served
    assert serving.check() is True  # the poll moves to new2 and the lease follows
    store.retain(root, keep=1)
    assert _versions(root) == ["new2"]
    serving.stop()
    assert not (root / store.LEASES / f"{serving.worker}.json").exists()


def test_the_snapshots_command_lists_pins_and_prunes(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHNEXT_SNAPSHOT_DIR", str(root))
    assert main(["snapshots", "pin", "v2", "--reason", "A/B baseline"]) == 0
    assert "pinned candidates-v2 + ranker-v2: A/B baseline" in capsys.readouterr().out
    assert main(["snapshots", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["version"] for r in rows if r["kind"] == "candidates"] == [
        f"v{n}" for n in range(6, 0, -1)
    ]
    assert {r["version"]: r["pinned"] for r in rows}["v2"] == "A/B baseline"
    assert main(["snapshots", "prune", "--keep", "3"]) == 0
    assert "4 deleted" in capsys.readouterr().out  # v1 and v3 of both kinds; v2 is pinned
    assert _versions(root) == ["v6", "v5", "v4", "v2"]
    assert main(["snapshots", "list"]) == 0
    text = capsys.readouterr().out
    assert "pinned (A/B baseline)" in text and text.count("\n") == 9  # header + 8 rows
    # a version that is not there: one line, exit 2, nothing pinned
    assert main(["snapshots", "pin", "v9"]) == 2
    assert "no complete snapshot candidates-v9 or ranker-v9" in capsys.readouterr().err
    assert not (root / store.PINS / "v9").exists()


def test_a_lease_name_is_a_safe_file_name_whatever_the_app_id() -> None:
    name = store.worker_name("watchnext:prod/é")
    assert "/" not in name and ":" not in name and not name.startswith(".")
    assert store._check_version(name) == name  # what write_lease requires of it
