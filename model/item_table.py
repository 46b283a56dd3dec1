"""Catalogue metadata as sorted columns, so the ranker's item features of a request's C
candidates are a few array lookups instead of C dictionary reads (issue 15: the request path
built column-wise).

:class:`ItemTable` holds, for N items sorted by id, the channel and topic as integer codes and
the upload time and duration as floats ("unknown" = code -1 or +inf, as
:mod:`model.ranking_features` reads them). Serving builds one per snapshot; training, which
passes a plain mapping, gets a small table over the ids of each call
(:meth:`ItemTable.of`), so both go through the same feature code.

Shapes: N items in the table, C looked-up ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from model.features import sorted_lookup


@dataclass(frozen=True)
class ItemMeta:
    """Catalogue facts about an item, from its upload event."""

    channel: str | None = None
    topic: str | None = None
    upload_ts: float | None = None
    duration: float | None = None


@dataclass(frozen=True)
class ItemColumns:
    """Metadata of C looked-up ids; an id outside the table reads as all unknown."""

    channel: np.ndarray  # [C] int64 channel code, -1 = none
    topic: np.ndarray  # [C] int64 topic code, -1 = none
    upload_ts: np.ndarray  # [C] float64, +inf = unknown
    duration: np.ndarray  # [C] float64, +inf = unknown


class ItemTable:
    """[N] item metadata columns sorted by item id."""

    def __init__(
        self,
        items: Mapping[int, ItemMeta],
        codes: tuple[dict[str, int], dict[str, int]] | None = None,
    ) -> None:
        """``codes``: the (channel, topic) codes of another table to extend (their values keep
        meaning the same channel and topic here; new names get new codes)."""
        ids = np.fromiter((int(i) for i in items), np.int64, len(items))
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        metas = [items[int(i)] for i in self.ids]
        channels: dict[str, int] = dict(codes[0]) if codes else {}
        topics: dict[str, int] = dict(codes[1]) if codes else {}
        self.channel = np.array(
            [
                -1 if m.channel is None else channels.setdefault(m.channel, len(channels))
                for m in metas
            ],
            dtype=np.int64,
        )
        self.topic = np.array(
            [-1 if m.topic is None else topics.setdefault(m.topic, len(topics)) for m in metas],
            dtype=np.int64,
        )
        inf = float("inf")
        self.upload_ts = np.array(
            [inf if m.upload_ts is None else float(m.upload_ts) for m in metas], dtype=np.float64
        )
        self.duration = np.array(
            [inf if m.duration is None else float(m.duration) for m in metas], dtype=np.float64
        )
        self.channel_codes, self.topic_codes = channels, topics

    @classmethod
    def of(cls, items: Mapping[int, ItemMeta], ids: Iterable[int]) -> ItemTable:
        """A table over the ``ids`` that ``items`` knows (per call, for a plain mapping)."""
        return cls({i: m for i in {int(i) for i in ids} if (m := items.get(i)) is not None})

    def columns(self, ids: np.ndarray) -> ItemColumns:
        """The metadata of ``ids`` [C] (any order, repeats allowed)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            none = np.full(len(ids), -1, dtype=np.int64)
            unknown = np.full(len(ids), np.inf)
            return ItemColumns(none, none.copy(), unknown, unknown.copy())
        pos, known = sorted_lookup(self.ids, ids)
        return ItemColumns(
            np.where(known, self.channel[pos], -1),
            np.where(known, self.topic[pos], -1),
            np.where(known, self.upload_ts[pos], np.inf),
            np.where(known, self.duration[pos], np.inf),
        )


class StackedItemTable:
    """A snapshot's :class:`ItemTable` with the metadata of items uploaded after it (the
    freshness overlay's): the same ``columns`` lookups, the base first, the extra for ids the
    base does not hold; channel and topic codes shared, so "same channel" compares alike."""

    def __init__(self, base: ItemTable, extra: Mapping[int, ItemMeta]) -> None:
        self.base = base
        self.extra = ItemTable(extra, (base.channel_codes, base.topic_codes))
        self.ids = np.union1d(base.ids, self.extra.ids)

    def columns(self, ids: np.ndarray) -> ItemColumns:
        ids = np.asarray(ids, dtype=np.int64)
        cols = self.base.columns(ids)
        if len(self.extra.ids) == 0 or len(ids) == 0:
            return cols
        more = self.extra.columns(ids)
        use = more.upload_ts != np.inf  # every overlay item has its upload time
        if not use.any():
            return cols
        return ItemColumns(
            np.where(use, more.channel, cols.channel),
            np.where(use, more.topic, cols.topic),
            np.where(use, more.upload_ts, cols.upload_ts),
            np.where(use, more.duration, cols.duration),
        )
