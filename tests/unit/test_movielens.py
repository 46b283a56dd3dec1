"""MovieLens readers for every published layout, and the ratings -> events mapping."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from model.datasets.movielens import DatasetError, load
from stream.events import EventKind, ProfileEvent, UploadEvent, WatchEvent
from stream.replay import ITEM_DURATION_S, movielens_events, watch_seconds

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"


def test_reads_ml100k_layout(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t100\n2\t10\t5\t90\n1\t11\t3\t120\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (tmp_path / "u.item").write_text(
        "10|A (1995)|01-Jan-1995||url|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
        "11|B (1996)|||url|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    )
    d = load(tmp_path)
    assert len(d) == 3 and d.layout == "u.data"
    assert (
        d.users[2].age == 53
        and d.items[10].genres == ("Action",)
        and d.items[11].release_ts is None
    )


def test_reads_dat_and_csv_layouts(tmp_path: Path) -> None:
    dat = tmp_path / "dat"
    dat.mkdir()
    (dat / "ratings.dat").write_text("1::10::4::100\n2::11::5::90\n")
    (dat / "users.dat").write_text("1::F::25::3::12345\n")
    (dat / "movies.dat").write_text("10::A (1995)::Action|Comedy\n")
    d = load(dat)
    assert d.layout == "ratings.dat" and list(d.items_col) == [10, 11] and d.users[1].gender == "F"
    csvd = tmp_path / "csv"
    csvd.mkdir()
    (csvd / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4.5,100\n3,12,2.0,80\n"
    )
    d = load(csvd / "ratings.csv")
    assert (
        d.layout == "ratings.csv" and list(d.ratings) == [4.5, 2.0] and list(d.users_col) == [1, 3]
    )


def test_unknown_layout_says_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"notes\.txt"):
        load(tmp_path)


@pytest.mark.skipif(not ML100K.exists(), reason="../shared/data/ml-100k not present")
def test_replay_mapping_on_ml100k() -> None:
    events = list(movielens_events(ML100K))
    kinds = [k for k, _ in events]
    assert kinds.count(EventKind.WATCH) == 100_000
    assert kinds.count(EventKind.PROFILE) == 943 and kinds.count(EventKind.UPLOAD) == 1682
    watches = [e for k, e in events if k is EventKind.WATCH]
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(watches))
    assert len({w.event_id for w in watches}) == 100_000  # deterministic ids: replays dedupe
    first_watch = {}
    for w in watches:
        first_watch.setdefault(w.user_id, w.ts)
    for _, p in ((k, e) for k, e in events if k is EventKind.PROFILE):
        assert isinstance(p, ProfileEvent) and p.ts < first_watch[p.user_id]
    assert all(
        isinstance(e, UploadEvent) and e.duration_seconds == ITEM_DURATION_S
        for k, e in events
        if k is EventKind.UPLOAD
    )
    assert isinstance(watches[0], WatchEvent) and watch_seconds(5) == ITEM_DURATION_S
