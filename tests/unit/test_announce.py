"""Snapshot announcements: only plain version names get through (they name directories), and
going back to an older pair takes an explicit rollback flag."""

from __future__ import annotations

import json

import pytest

from stream.announce import MAX_BYTES, Announcement, announcement, parse


def test_round_trip() -> None:
    versions = {"candidates": "20261123T010203-42", "ranker": "20261123T010204-42"}
    assert parse(announcement(versions, {"recall": 0.3})) == Announcement(versions, False)
    assert parse(announcement(versions, rollback=True)) == Announcement(versions, True)
    assert "rollback" not in json.loads(announcement(versions))  # old readers see no change


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        json.dumps({"versions": ["a"]}).encode(),
        json.dumps({"versions": {"candidates": "../../etc"}}).encode(),
        json.dumps({"versions": {"candidates": "a/b"}}).encode(),
        json.dumps({"versions": {"candidates": ".hidden"}}).encode(),
        json.dumps({"versions": {"candidates": 7}}).encode(),
        json.dumps({"versions": {"candidates": "a"}, "rollback": "false"}).encode(),
        json.dumps({"versions": {"candidates": "a"}, "rollback": 1}).encode(),
        b'{"versions": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"\xff\xfe{}",
        b" " * (MAX_BYTES + 1),
        None,
    ],
)
def test_malformed_announcements_are_refused(raw: bytes | None) -> None:
    with pytest.raises(ValueError):
        parse(raw)


def test_serving_ignores_an_announced_path_outside_the_root(tmp_path) -> None:
    from stream.live_models import Serving
    from watchnext.settings import Settings

    serving = Serving(Settings(snapshot_dir=tmp_path / "snap", data_dir=tmp_path / "w"))
    serving.notify({"candidates": "../x", "ranker": "y"})
    assert serving._take_announcement() is None
    serving.notify(Announcement({"candidates": "../x", "ranker": "y"}, rollback=True))
    assert serving.check() is False  # and the poll finds nothing either
