"""Items taken down: never served again, by any worker, from the moment the takedown is read.

A takedown is an upload with ``removed: true`` (the item's upload record again, with a newer
``ts``); an upload of the same item with a newer ``ts`` and without ``removed`` restores it.
The uploads agent keeps the latest upload per item in the ``items`` table, but that table is
partitioned: only the worker owning the item's partition would know. So every worker reads the
whole upload topic itself, on its own thread, with a consumer outside the group (as snapshot
announcements are read, :mod:`stream.announce`), from the start on every start
(:mod:`stream.catalogue`), and serving excludes the set
(:meth:`stream.live_models.Serving.answer_many`). No retrain is needed and no request after
the worker read the takedown returns the item.

Only items ever taken down are kept (with the time of their newest upload), so the set stays
as small as the takedowns. An upload that restores an item is only remembered for items taken
down before it was read: a restore read *before* an older takedown of the same item (a producer
that sends events late, on one partition) leaves the item down; send the restore again.
"""

from __future__ import annotations

import numpy as np

from stream import metrics
from stream.events import UploadEvent


class Takedowns:
    """The set of items taken down, updated by one thread and read by others without locks
    (the sorted id array is replaced whole on every change)."""

    def __init__(self) -> None:
        self._latest: dict[int, tuple[float, bool]] = {}  # item -> (newest ts, removed)
        self._removed = np.zeros(0, np.int64)

    def apply(self, upload: UploadEvent) -> bool:
        """Take the upload into account; True when the set changed."""
        old = self._latest.get(upload.item_id)
        if old is None and not upload.removed:
            return False  # an ordinary upload of an item never taken down
        if old is not None and old[0] >= upload.ts:
            return False  # older than (or as old as) what decided the item's state
        self._latest[upload.item_id] = (upload.ts, upload.removed)
        was = old is not None and old[1]
        if was == upload.removed:
            return False
        ids = [item for item, (_, removed) in self._latest.items() if removed]
        self._removed = np.array(sorted(ids), dtype=np.int64)
        metrics.ITEMS_TAKEN_DOWN.set(len(ids))
        return True

    def removed(self) -> np.ndarray:
        """Sorted ids of the items taken down (never modified in place)."""
        return self._removed

    def __contains__(self, item_id: int) -> bool:
        r = self._removed
        i = int(np.searchsorted(r, item_id))
        return i < len(r) and int(r[i]) == item_id
