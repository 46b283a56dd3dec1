"""What every worker knows of items newer than its snapshot: uploads and their first watchers.

The freshness overlay (:mod:`serving.overlay`) needs, on every worker, each new item's upload
(its metadata) and the contexts of its first watchers. Uploads are on the upload topic, which
every worker already reads whole (:mod:`stream.catalogue`); a watch is seen only by the worker
that owns its user's partition, so that worker publishes a :class:`stream.events.FreshWatch`
for every applied watch of an item its snapshot does not hold, on the ``fresh-watches`` topic,
which every worker also reads whole. After a restart both are read again from the start (the
fresh-watches topic keeps a week), so the overlay is rebuilt from the topics alone.

Bounded: at most ``max_items`` items (the newest uploads; items without an upload yet are
dropped first), each with at most ``max_watchers`` distinct watchers (its first ones: a
replayed or duplicate FreshWatch of a user already counted changes nothing). Items a newly
served snapshot holds are forgotten (:meth:`FreshItems.forget`): the snapshot serves them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from model.ranking_data import item_meta
from model.ranking_features import ItemMeta
from serving.overlay import NewItem
from stream.events import FreshWatch, UploadEvent


@dataclass
class _Entry:
    meta: ItemMeta | None = None
    upload_ts: float = float("-inf")
    watchers: dict[int, tuple[int, ...]] = field(default_factory=dict)  # user -> context


class FreshItems:
    """New items and their first watchers; written by the catalogue thread, read by builders."""

    def __init__(self, max_items: int = 20_000, max_watchers: int = 50) -> None:
        self.max_items = max_items
        self.max_watchers = max_watchers
        self._items: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change the overlay would see

    def upload(self, event: UploadEvent) -> bool:
        """Take an upload (the newest per item wins); True when it changed something."""
        with self._lock:
            entry = self._items.get(event.item_id)
            if entry is not None and entry.upload_ts >= event.ts:
                return False
            if entry is None:
                entry = self._items[event.item_id] = _Entry()
            entry.meta, entry.upload_ts = item_meta(event), event.ts
            self._bound()
            self.version += 1
            return True

    def watch(self, event: FreshWatch) -> bool:
        """Take a first watcher's context; True when it is one the overlay did not have."""
        with self._lock:
            entry = self._items.get(event.item_id)
            if entry is None:  # read before its upload (another partition): kept, bounded
                entry = self._items[event.item_id] = _Entry()
                self._bound()
            if event.user_id in entry.watchers or len(entry.watchers) >= self.max_watchers:
                return False
            entry.watchers[event.user_id] = tuple(event.context)
            self.version += 1
            return True

    def _bound(self) -> None:
        """Beyond max_items, drop a quarter: items without an upload first, then the oldest."""
        if len(self._items) <= self.max_items:
            return
        keep = int(self.max_items * 0.75)
        order = sorted(self._items, key=lambda i: (self._items[i].upload_ts, i), reverse=True)
        self._items = {i: self._items[i] for i in order[:keep]}

    def forget(self, held: Callable[[int], bool]) -> int:
        """Drop the items ``held`` says a snapshot holds; returns how many."""
        with self._lock:
            gone = [i for i in self._items if held(i)]
            for i in gone:
                del self._items[i]
            if gone:
                self.version += 1
            return len(gone)

    def items(self) -> dict[int, NewItem]:
        """The items with a known upload, as the overlay builder takes them (a copy)."""
        with self._lock:
            return {
                i: NewItem(e.meta, list(e.watchers.values()), set(e.watchers))
                for i, e in self._items.items()
                if e.meta is not None
            }

    def __len__(self) -> int:
        return len(self._items)
