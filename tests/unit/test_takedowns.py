"""Takedowns (stream.takedowns): the newest upload of an item decides, only takedowns kept."""

from __future__ import annotations

import numpy as np

from stream.events import UploadEvent
from stream.takedowns import Takedowns


def _up(item: int, ts: float, removed: bool = False) -> UploadEvent:
    return UploadEvent(item_id=item, ts=ts, duration_seconds=60.0, removed=removed)


def test_a_takedown_removes_and_a_newer_upload_restores() -> None:
    t = Takedowns()
    assert not t.apply(_up(5, 1.0))  # an ordinary upload is not remembered
    assert t.apply(_up(5, 2.0, removed=True)) and 5 in t
    assert not t.apply(_up(5, 1.5))  # older than the takedown: no effect
    assert not t.apply(_up(5, 2.0, removed=True))  # replayed: no change
    assert t.apply(_up(9, 3.0, removed=True)) and t.apply(_up(7, 3.0, removed=True))
    assert t.removed().tolist() == [5, 7, 9]
    assert t.apply(_up(5, 4.0)) and 5 not in t
    assert t.removed().tolist() == [7, 9]
    assert not t.apply(_up(5, 3.5, removed=True))  # older than the restore


def test_reads_see_a_whole_array_never_one_changed_in_place() -> None:
    t = Takedowns()
    t.apply(_up(3, 1.0, removed=True))
    before = t.removed()
    t.apply(_up(4, 1.0, removed=True))
    assert before.tolist() == [3] and t.removed().tolist() == [3, 4]
    assert t.removed().dtype == np.int64


def test_replaying_the_topic_in_any_order_of_distinct_items_gives_one_set() -> None:
    ups = [_up(i % 7, float(i), removed=i % 3 == 0) for i in range(40)]
    forward, backward = Takedowns(), Takedowns()
    for u in ups:
        forward.apply(u)
    by_item: dict[int, list[UploadEvent]] = {}
    for u in ups:
        by_item.setdefault(u.item_id, []).append(u)
    for item in sorted(by_item, reverse=True):  # items interleaved otherwise; each in order
        for u in by_item[item]:
            backward.apply(u)
    truth = sorted(i for i, us in by_item.items() if max(us, key=lambda u: u.ts).removed)
    assert forward.removed().tolist() == backward.removed().tolist() == truth
