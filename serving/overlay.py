"""The freshness overlay: items uploaded after the served snapshot, retrievable without a retrain.

A snapshot's index knows only the items it was trained on; a new upload waits for the next
promoted retrain (paper §3.3's "fresh content uploaded every second" is the challenge). The
overlay is a small exact inner-product index of the items the served snapshot does not hold,
whose vectors are folded in from what the stream already knows, in the snapshot's item space:

* **Watches** (implicit-feedback fold-in): each of the item's first watchers contributes the
  mean output vector of the snapshot items they watched just before it (their context); the
  item's fold-in vector is the mean over watchers. Users who watch the new item after the
  same things as these watchers score it highly, as they would a snapshot item.
* **Back-off** for items with few or no watchers: the mean vector of the snapshot's items of
  the same channel (else of the same topic, the first tag), with weight ``prior_weight`` as if
  that many watchers had contributed it: ``v = (n·watchers + λ·prior) / (n + λ)``.
* **Scale**: averaging shortens vectors, and in a softmax model the norm carries popularity; the
  folded vector takes the mean norm of the vectors it averaged, times ``boost`` (a new upload
  is in its popularity spike, which those older items' norms do not carry).

An item with neither watchers nor a known channel or topic has no vector and is not retrievable
until its first watch. Retrieval merges the overlay's top-K with the main index's top-K by score
(:func:`merge_by_score`); the served ranker then ranks them all (a new item has the zero-row id
embedding and its item age from the upload time, :class:`model.item_table.StackedItemTable`).

Shapes: M overlay items, H the item-vector width, B users, K retrieved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.features import member_of, sorted_lookup
from model.item_table import ItemMeta, ItemTable, StackedItemTable


@dataclass(frozen=True)
class FoldInConfig:
    """How a new item's vector is folded in (chosen on the validation window of
    ``watchnext eval freshness``)."""

    prior_weight: float = 0.5  # λ: watchers the channel/topic prior counts as
    context: int = 20  # the watcher's last known items that stand for them
    max_watchers: int = 50  # the item's first watchers folded in (later ones change little)
    # multiplies the folded norm: a new upload is in its popularity spike (paper §3.3), which
    # the mean norm of the older items it is folded from does not carry
    boost: float = 4.0
    # what a watcher contributes: "users", the direction of its user vector (the snapshot's
    # user tower over its context: who watches the item next); "items", the mean output
    # vector of the items in its context
    watchers: str = "users"


@dataclass
class NewItem:
    """What the stream knows of an item uploaded after the snapshot."""

    meta: ItemMeta
    contexts: list[tuple[int, ...]] = field(default_factory=list)  # per watcher, oldest first
    watchers: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Overlay:
    """[M] new item ids (sorted), their [M, H] vectors and the metadata table that extends the
    snapshot's for the ranker."""

    ids: np.ndarray
    vectors: np.ndarray
    table: StackedItemTable | ItemTable
    watched: int = 0  # of the M, items with at least one watcher folded in

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self, u: np.ndarray, k: int, exclude: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per user of ``u`` [B, H]: the overlay's top-``k`` (ids, scores), best first, none of
        the sorted ``exclude[b]``. Exact: M is small (bounded by ``overlay_items``)."""
        if len(self.ids) == 0 or k <= 0:
            empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
            return [empty for _ in range(len(u))]
        scores = np.asarray(u, dtype=np.float32) @ self.vectors.T  # [B, M]
        out = []
        for b in range(len(scores)):
            s = scores[b]
            ok = ~member_of(self.ids, exclude[b]) if len(exclude[b]) else np.ones(len(s), bool)
            idx = np.flatnonzero(ok)
            if len(idx) > k:
                idx = idx[np.argpartition(-s[idx], k - 1)[:k]]
            idx = idx[np.argsort(-s[idx], kind="stable")]
            out.append((self.ids[idx], s[idx]))
        return out


def merge_by_score(
    ids: np.ndarray, scores: np.ndarray, more_ids: np.ndarray, more_scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top-``k`` of two best-first lists by score (ties: the first list first)."""
    if len(more_ids) == 0:
        return ids[:k], scores[:k]
    all_ids = np.concatenate([ids, more_ids])
    all_scores = np.concatenate([scores, more_scores]).astype(np.float32)
    order = np.argsort(-all_scores, kind="stable")[:k]
    return all_ids[order], all_scores[order]


Embed = Callable[[Sequence[tuple[int, ...]]], np.ndarray]  # contexts [W] -> user vectors [W, H]


@dataclass(frozen=True)
class ItemSpace:
    """A snapshot's item vectors by id, its channel and topic means (the priors), and its user
    tower over a context of items (``embed``; None: watchers contribute their items)."""

    sorted_ids: np.ndarray  # [N] ascending
    vectors: np.ndarray  # [N, H], row i = sorted_ids[i]
    norms: np.ndarray  # [N]
    channel_mean: dict[str, tuple[np.ndarray, float]]  # channel -> (mean vector, mean norm)
    topic_mean: dict[str, tuple[np.ndarray, float]]
    mean_norm: float = 1.0
    embed: Embed | None = None

    @classmethod
    def of(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        items: Mapping[int, ItemMeta] | ItemTable,
        embed: Embed | None = None,
    ) -> ItemSpace:
        """``items``: the catalogue metadata, as a mapping or as the snapshot's table (column
        lookups: a million-item snapshot's means in array operations on the loader thread)."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids, vecs = ids[order], np.asarray(vectors, dtype=np.float32)[order]
        norms = np.linalg.norm(vecs, axis=1)
        table = ItemTable.of(items, sorted_ids.tolist()) if isinstance(items, Mapping) else items
        cols = table.columns(sorted_ids)

        def means(codes: np.ndarray, names: dict[str, int]) -> dict[str, tuple[np.ndarray, float]]:
            known = codes >= 0
            if not known.any():
                return {}
            rows = np.flatnonzero(known)
            rows = rows[np.argsort(codes[rows], kind="stable")]  # grouped by code
            grouped = codes[rows]
            starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
            counts = np.diff(np.r_[starts, len(rows)])
            sums = np.add.reduceat(vecs[rows], starts, axis=0)
            norm_sums = np.add.reduceat(norms[rows], starts)
            by_code = {int(c): k for k, c in enumerate(grouped[starts])}
            return {
                name: (
                    (sums[by_code[code]] / counts[by_code[code]]).astype(np.float32),
                    float(norm_sums[by_code[code]] / counts[by_code[code]]),
                )
                for name, code in names.items()
                if code in by_code
            }

        mean_norm = float(norms.mean()) if len(norms) else 1.0
        return cls(
            sorted_ids,
            vecs,
            norms,
            means(cols.channel, table.channel_codes),
            means(cols.topic, table.topic_codes),
            mean_norm,
            embed,
        )

    def rows(self, ids: Sequence[int]) -> np.ndarray:
        """Rows of the ``ids`` the snapshot knows (unknown ones dropped)."""
        pos, hit = sorted_lookup(self.sorted_ids, np.asarray(ids, dtype=np.int64))
        return pos[hit]

    def knows(self, item: int) -> bool:
        return bool(len(self.rows([item])))


def _unit(vec: np.ndarray) -> np.ndarray | None:
    length = float(np.linalg.norm(vec))
    return vec / length if length > 0 else None


def fold_in(item: NewItem, space: ItemSpace, cfg: FoldInConfig) -> np.ndarray | None:
    """[H] the item's vector (module docstring), None without any evidence.

    Each part is a direction with a norm and a weight (watchers: their count; the prior:
    ``prior_weight``); the vector is the weighted sum of the directions, at the weighted mean
    norm times ``boost``.
    """
    parts: list[tuple[float, np.ndarray, float]] = []  # (weight, unit direction, norm)
    contexts = [c[-cfg.context :] for c in item.contexts[: cfg.max_watchers]]
    if contexts and cfg.watchers == "users" and space.embed is not None:
        users = np.asarray(space.embed(contexts), dtype=np.float32)
        direction = _unit(users.mean(axis=0))
        if direction is not None:
            parts.append((float(len(contexts)), direction, space.mean_norm))
    elif contexts:
        watched = []
        for context in contexts:
            rows = space.rows(context)
            if len(rows):
                watched.append((space.vectors[rows].mean(axis=0), float(space.norms[rows].mean())))
        direction = _unit(np.mean([v for v, _ in watched], axis=0)) if watched else None
        if direction is not None:
            norm = float(np.mean([n for _, n in watched]))
            parts.append((float(len(watched)), direction, norm))
    prior = None
    if item.meta.channel is not None:
        prior = space.channel_mean.get(item.meta.channel)
    if prior is None and item.meta.topic is not None:
        prior = space.topic_mean.get(item.meta.topic)
    if prior is not None and cfg.prior_weight > 0:
        direction = _unit(prior[0])
        if direction is not None:
            parts.append((cfg.prior_weight, direction, prior[1]))
    if not parts:
        return None
    total = sum(w for w, _, _ in parts)
    vec = _unit(np.sum([w * d for w, d, _ in parts], axis=0))
    if vec is None:
        return None
    norm = sum(w * n for w, _, n in parts) / total
    return (vec * (cfg.boost * norm)).astype(np.float32)


def context_embedder(trained: Any, cfg: Any) -> Embed:
    """The snapshot's user tower over a context of items (a history with no searches, no
    profile): the vector of a user who watched those items, as the worker would compute it."""
    from model.candidate_inputs import user_vectors
    from model.protocol import UserTimeline

    def embed(contexts: Sequence[tuple[int, ...]]) -> np.ndarray:
        tls = [
            UserTimeline(0, tuple(float(n) for n in range(len(c))), tuple((int(i),) for i in c))
            if c
            else None
            for c in contexts
        ]
        return user_vectors(trained, tls, [None] * len(tls), cfg).numpy()

    return embed


class OverlayBuilder:
    """Builds one snapshot's overlays as new items and watchers arrive, folding in again only
    the items whose evidence changed since the last build (the rest come from a cache)."""

    def __init__(self, space: ItemSpace, base_table: ItemTable, cfg: FoldInConfig) -> None:
        self.space, self.base_table, self.cfg = space, base_table, cfg
        self._cache: dict[int, tuple[tuple[int, ItemMeta], np.ndarray | None]] = {}

    def build(self, new_items: Mapping[int, NewItem]) -> Overlay:
        """The overlay of every item in ``new_items`` the snapshot does not hold and that has
        a vector (items the snapshot contains are dropped: the snapshot serves them)."""
        candidates = np.asarray(sorted(new_items), dtype=np.int64)
        _, held = sorted_lookup(self.space.sorted_ids, candidates)
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        metas: dict[int, ItemMeta] = {}
        watched = 0
        cache: dict[int, tuple[tuple[int, ItemMeta], np.ndarray | None]] = {}
        for item in candidates[~held].tolist():
            new = new_items[item]
            key = (len(new.contexts), new.meta)
            hit = self._cache.get(item)
            vec = fold_in(new, self.space, self.cfg) if hit is None or hit[0] != key else hit[1]
            cache[item] = (key, vec)
            if vec is None:
                continue
            ids.append(item)
            vecs.append(vec)
            metas[item] = new.meta
            watched += bool(new.contexts)
        self._cache = cache  # items gone from new_items (or now held) leave the cache
        width = self.space.vectors.shape[1] if self.space.vectors.ndim == 2 else 0
        return Overlay(
            np.asarray(ids, dtype=np.int64),
            np.stack(vecs) if vecs else np.zeros((0, width), np.float32),
            StackedItemTable(self.base_table, metas) if metas else self.base_table,
            watched,
        )


def build_overlay(
    space: ItemSpace,
    base_table: ItemTable,
    new_items: Mapping[int, NewItem],
    cfg: FoldInConfig,
) -> Overlay:
    """One overlay, built from scratch (:class:`OverlayBuilder` keeps a cache between builds)."""
    return OverlayBuilder(space, base_table, cfg).build(new_items)
