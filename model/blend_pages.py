"""Ranking pages whose candidates come from the served blend (MovieLens proxy).

The shipped ranker orders what the blend of candidate sources nominates (neural ANN top-K' ∪
item-to-item top-K'', :mod:`model.candidate_blend`), so it is trained on pages built the same
way: for each (user, second) after the user's first, the user's state just before that second
(replayed through ``stream.state.apply``, as the worker keeps it) is given to both sources
exactly as serving does; the items rated in that second *that the blend retrieved* are the
clicked impressions (an item the blend did not nominate can never be served, so it teaches
the ranker nothing about what it will see), and ``negatives`` other blend candidates drawn
uniformly are the unclicked ones. Every shown item carries every source's score and its ranks
in the sources' lists, computed the same way for clicked and unclicked items, so none of them
reveals the label. A page whose rated items the blend missed entirely is skipped.

This differs from :func:`model.ranking_data.movielens_pages` (the documented proxy behind
``eval ranking``: negatives from the neural generator's top 100, every rated item a positive),
which stays as it is so its figures stay comparable.

Shapes: P pages of a user, N catalogue items, H embedding width.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

from model.candidate_blend import SourceList, merge
from model.candidate_inputs import timeline_from_history, user_attrs, user_vectors
from model.features import sorted_lookup
from model.item_table import ItemTable
from model.item_to_item import ItemToItem
from model.ranking_data import Page, PageSet
from model.ranking_features import ItemMeta, impression_features
from model.train_candidate import TrainConfig, Trained
from stream.events import ImpressionEvent, ProfileEvent, SearchEvent, ShownItem, WatchEvent
from stream.state import Limits, UserState, apply

RETRIEVE = 150  # the neural source's list per request (Settings.retrieve_k)
RETRIEVE_I2I = 50  # the item-to-item source's list per request (Settings.retrieve_i2i)


def _top(scores: np.ndarray, ids: np.ndarray, k: int, exclude: set[int]) -> SourceList:
    """The ``k`` best of a full score row, ``exclude`` never among them (as the index + filter)."""
    take = min(len(ids), k + len(exclude))
    part = np.argpartition(-scores, take - 1)[:take] if take < len(ids) else np.arange(len(ids))
    part = part[np.lexsort((ids[part], -scores[part]))]
    keep = [c for c in part if int(ids[c]) not in exclude][:k]
    return SourceList(ids[keep], scores[keep].astype(np.float64))


def blend_pages(
    user_events: Mapping[int, Iterable[Any]],
    items: Mapping[int, ItemMeta],
    candidates: Trained,
    candidate_cfg: TrainConfig,
    i2i: ItemToItem | None,
    negatives: int = 10,
    retrieve: int = RETRIEVE,
    retrieve_i2i: int = RETRIEVE_I2I,
    seed: int = 0,
    progress: bool = True,
    states: dict[int, UserState] | None = None,
    page_users: Container[int] | None = None,
) -> PageSet:
    """Pages from each user's profile and watch events (any order; sorted by time here).

    Args:
        user_events: user id -> that user's :class:`ProfileEvent` and :class:`WatchEvent`
            records (only the history a model may see: a caller evaluating on later seconds
            passes the events before them).
        items: catalogue metadata (the ranker's item features).
        candidates, candidate_cfg: the neural generator (its u·v is the ANN score, exactly).
        i2i: the item-to-item source, or None for a neural-only blend.
        states: filled with each user's state after all their events and pages (the value a
            worker would hold next: profile, rolling history, searches, impression counters).
        page_users: the users whose pages are built (None: all); every other user's events
            are replayed into ``states`` without pages (no page, no impression).
    """
    rng = np.random.default_rng(seed)
    table = ItemTable(items)  # the ranker's item features as columns, built once
    item_matrix = candidates.model.item_vectors()[1:].detach()  # [N, H]
    item_ids = np.asarray(candidates.items.ids, dtype=np.int64)
    order = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order]
    limits = Limits()
    out = PageSet()
    for user in tqdm(sorted(user_events), desc="blend pages", unit="user", disable=not progress):
        events = sorted(user_events[user], key=lambda e: e.ts)
        seconds: dict[float, list[WatchEvent]] = {}
        live = UserState(user_id=user)
        for e in events:
            if isinstance(e, WatchEvent):
                seconds.setdefault(e.ts, []).append(e)
            elif isinstance(e, ProfileEvent):
                live = apply(live, e, None, limits)
        searches = [e for e in events if isinstance(e, SearchEvent)]  # time order (sorted)
        secs = sorted(seconds)
        if len(secs) < 2 or (page_users is not None and user not in page_users):
            for e in events:
                if isinstance(e, WatchEvent | SearchEvent):
                    live = apply(live, e, None, limits)
            if states is not None:
                states[user] = live
            continue
        # the user vector of each page: the watch history just before its second, batched
        history = live
        tls = []
        k = 0  # searches applied to ``history`` so far
        for j, sec in enumerate(secs[:-1]):
            for w in seconds[sec]:
                history = apply(history, w, None, limits)
            while k < len(searches) and searches[k].ts < secs[j + 1]:  # before the page's second
                history = apply(history, searches[k], None, limits)
                k += 1
            tls.append(timeline_from_history(user, history.history, history.search_tokens))
        attrs = user_attrs(live.profile, live.device)
        k = 0  # searches applied to ``live`` so far
        while k < len(searches) and searches[k].ts < secs[0]:
            live = apply(live, searches[k], None, limits)
            k += 1
        u = user_vectors(candidates, tls, [attrs] * len(tls), candidate_cfg)  # [P, H]
        ann_scores = (u @ item_matrix.T).numpy()  # [P, N]
        for j, sec in enumerate(secs):
            if j > 0:
                page = _page(
                    live, sec, seconds[sec], ann_scores[j - 1], item_ids, order, sorted_ids,
                    i2i, table, negatives, retrieve, retrieve_i2i, rng,
                )  # fmt: skip
                if page is not None:
                    out.pages.append(page)
                    # the page was shown: later pages see it in the impression counters
                    shown = [
                        ShownItem(item_id=i, position=p) for p, i in enumerate(page.features.items)
                    ]
                    live = apply(
                        live,
                        ImpressionEvent(
                            event_id=f"ml-blend-page-{user}-{int(sec)}",
                            user_id=user,
                            items=shown,
                            ts=sec,
                        ),
                        None,
                        limits,
                    )
            for w in seconds[sec]:
                live = apply(live, w, None, limits)
            nxt = secs[j + 1] if j + 1 < len(secs) else float("inf")
            while k < len(searches) and searches[k].ts < nxt:
                live = apply(live, searches[k], None, limits)
                k += 1
        if states is not None:
            states[user] = live
    return out


def _page(
    live: UserState,
    sec: float,
    watches: list[WatchEvent],
    ann_row: np.ndarray,
    item_ids: np.ndarray,
    order: np.ndarray,
    sorted_ids: np.ndarray,
    i2i: ItemToItem | None,
    items: ItemTable,
    negatives: int,
    retrieve: int,
    retrieve_i2i: int,
    rng: np.random.Generator,
) -> Page | None:
    """One page for the user in state ``live`` at second ``sec`` (None: the blend missed every
    item rated then)."""
    watched = live.seen_items()  # as serving excludes
    lists = {"candidates": _top(ann_row, item_ids, retrieve, watched)}

    def ann_of(ids: np.ndarray) -> np.ndarray:
        pos, hit = sorted_lookup(sorted_ids, ids)
        return np.where(hit, ann_row[order[pos]], -np.inf)

    fill: dict[str, Any] = {"candidates": ann_of}
    if i2i is not None:
        us = i2i.user_scores([w.item_id for w in live.history])
        top_ids, top_scores = us.top(retrieve_i2i, watched)
        lists["i2i"] = SourceList(top_ids, top_scores.astype(np.float64))
        fill["i2i"] = us.of
    blend = merge(lists, fill)
    rated = {w.item_id: w.watch_seconds for w in watches}
    hit = np.array([int(i) in rated for i in blend.ids], dtype=bool)
    if not hit.any():
        return None
    rest = np.flatnonzero(~hit)
    neg = rng.choice(rest, size=min(negatives, len(rest)), replace=False) if len(rest) else rest
    shown = np.concatenate([np.flatnonzero(hit), neg]).astype(np.int64)
    feats = impression_features(live, blend.columns(shown), items, sec)
    watch = np.array([rated.get(i, 0.0) for i in feats.items])
    return Page(live.user_id, sec, feats, watch > 0, watch)
