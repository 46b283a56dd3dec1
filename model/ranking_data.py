"""Ranking training data: impressions joined with the watches that followed them.

Each row group is one page (an impression event): every shown item with its features computed
from the user's state *before* the page, its label (watched or not) and its watch time. The
state is built by replaying the user's events through the stream's own transition
(``stream.state.apply``), so the features a model trains on are exactly what the worker would
compute at serving time (one code path: :func:`model.ranking_features.impression_features`).

Sources:
* the synthetic world (:mod:`model.synth`): impressions from its logging policy, clicks and
  watch time from ground-truth affinity, so the expected watch time of every impression is known;
* the MovieLens proxy of ``evaluation.md`` (:func:`movielens_pages`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from model.ranking_features import Candidate, ItemMeta, RawFeatures, impression_features
from stream.events import (
    EventKind,
    ImpressionEvent,
    ProfileEvent,
    SearchEvent,
    ShownItem,
    UploadEvent,
    WatchEvent,
)
from stream.state import Limits, UserState, apply


def item_meta(upload: UploadEvent) -> ItemMeta:
    """An upload event as ranking metadata (topic = the first tag)."""
    return ItemMeta(
        channel=upload.channel,
        topic=upload.tags[0] if upload.tags else None,
        upload_ts=upload.ts,
        duration=upload.duration_seconds,
    )


@dataclass
class Page:
    """One impression: features of its shown items, labels, watch times and truth if known."""

    user: int
    ts: float
    features: RawFeatures
    clicked: np.ndarray  # [C] bool
    watch_seconds: np.ndarray  # [C] 0 for unclicked
    expected_seconds: np.ndarray | None = None  # [C] ground-truth E[T] (synthetic only)


@dataclass
class PageSet:
    """Pages of many users, oldest first within a user."""

    pages: list[Page] = field(default_factory=list)

    def split_by_time(self, test_fraction: float = 0.2) -> tuple[PageSet, PageSet]:
        """(train, test): pages at or after the (1 − fraction) time quantile are held out."""
        ts = np.array([p.ts for p in self.pages])
        cut = float(np.quantile(ts, 1 - test_fraction)) if len(ts) else 0.0
        return (
            PageSet([p for p in self.pages if p.ts < cut]),
            PageSet([p for p in self.pages if p.ts >= cut]),
        )

    def rows(self) -> int:
        return sum(len(p.clicked) for p in self.pages)


def pages_from_events(
    user_events: Iterable[tuple[EventKind, Any]],
    items: Mapping[int, ItemMeta],
    limits: Limits,
    truth: Any = None,
) -> Iterator[Page]:
    """Replay one user's time-ordered events; yield a page for every impression event."""
    events = list(user_events)
    watched: dict[str, dict[int, float]] = {}
    for kind, e in events:
        if kind is EventKind.WATCH and isinstance(e, WatchEvent) and e.request_id is not None:
            watched.setdefault(e.request_id, {})[e.item_id] = e.watch_seconds
    state: UserState | None = None
    for _kind, e in events:
        if not isinstance(e, WatchEvent | SearchEvent | ImpressionEvent | ProfileEvent):
            continue
        if state is None:
            state = UserState(user_id=e.user_id)
        if isinstance(e, ImpressionEvent):
            cands = [
                Candidate(
                    s.item_id,
                    s.source or "unknown",
                    s.score if s.score is not None else 0.0,
                    s.source_scores or {},
                    s.source_ranks or {},
                )
                for s in e.items
            ]
            feats = impression_features(state, cands, items, e.ts)
            got = watched.get(e.request_id or "", {})
            secs = np.array([got.get(c.item_id, 0.0) for c in cands])
            expected = None
            if truth is not None:
                expected = truth.expected_watch_seconds(
                    e.user_id, np.array([c.item_id for c in cands])
                )
            yield Page(e.user_id, e.ts, feats, secs > 0, secs, expected)
        state = apply(state, e, None, limits)


def synthetic_pages(world: Any, users: int | None = None, progress: bool = True) -> PageSet:
    """Pages of the first ``users`` users of a :class:`model.synth.World`, with ground truth."""
    items = {e.item_id: item_meta(e) for _, e in world.uploads() if isinstance(e, UploadEvent)}
    n = users if users is not None else world.config.n_users
    out = PageSet()
    limits = Limits()
    for user in tqdm(range(n), desc="ranking pages", unit="user", disable=not progress):
        out.pages.extend(pages_from_events(world.user_events(user), items, limits, world))
    return out


def movielens_item_meta(path: Any) -> dict[int, ItemMeta]:
    """Item metadata from the MovieLens replay's upload events."""
    from stream.replay import movielens_events

    return {
        e.item_id: item_meta(e)
        for kind, e in movielens_events(path)
        if kind is EventKind.UPLOAD and isinstance(e, UploadEvent)
    }


def movielens_user_events(path: Any) -> tuple[dict[int, list[Any]], dict[int, ItemMeta]]:
    """(each user's profile and watch events, the catalogue) of the MovieLens replay."""
    from stream.replay import movielens_events

    events: dict[int, list[Any]] = {}
    items: dict[int, ItemMeta] = {}
    for kind, e in movielens_events(path):
        if kind is EventKind.UPLOAD and isinstance(e, UploadEvent):
            items[e.item_id] = item_meta(e)
        elif isinstance(e, ProfileEvent | WatchEvent):
            events.setdefault(e.user_id, []).append(e)
    return events, items


def movielens_pages(
    path: Any,
    candidates: Any,
    candidate_cfg: Any,
    negatives: int = 10,
    top: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> PageSet:
    """The MovieLens proxy of ``evaluation.md``, seeded.

    Each page is also applied to the user's state as an impression, so later pages carry
    previous-impression counts (impression frequency, paper §4.1).

    One page per (user, second) after the user's first second: the items rated in that second
    are clicked impressions with watch time = rating / 5 × 5400 s (the replay mapping of
    :mod:`stream.replay`), plus ``negatives`` unclicked impressions drawn uniformly from the
    candidate generator's top ``top`` for the user's state just before that second, excluding
    items already watched or rated in it. Every shown item gets source "candidate" and its
    candidate score u·v, so neither reveals the label.

    Args:
        candidates: a trained candidate generator (:class:`model.train_candidate.Trained`).
        candidate_cfg: its :class:`model.train_candidate.TrainConfig` (feature switches).
    """
    from model.candidate_inputs import timeline_from_history, user_attrs, user_vectors
    from stream.replay import movielens_events

    rng = np.random.default_rng(seed)
    items = movielens_item_meta(path)
    per_user: dict[int, list[Any]] = {}
    for _kind, e in movielens_events(path):
        if isinstance(e, ProfileEvent | WatchEvent):
            per_user.setdefault(e.user_id, []).append(e)
    item_matrix = candidates.model.item_vectors()[1:].detach()  # [N, H]
    item_ids = np.asarray(candidates.items.ids, dtype=np.int64)
    col = {int(i): c for c, i in enumerate(item_ids)}
    limits = Limits()
    out = PageSet()
    for user in tqdm(sorted(per_user), desc="movielens pages", unit="user", disable=not progress):
        events = sorted(per_user[user], key=lambda e: e.ts)
        seconds: dict[float, list[WatchEvent]] = {}
        for e in events:
            if isinstance(e, WatchEvent):
                seconds.setdefault(e.ts, []).append(e)
        state = UserState(user_id=user)
        profile = [e for e in events if isinstance(e, ProfileEvent)]
        for p in profile:
            state = apply(state, p, None, limits)
        attrs = user_attrs(state.profile, state.device)
        states: list[tuple[float, UserState]] = []
        for j, (sec, watches) in enumerate(sorted(seconds.items())):
            if j > 0:
                states.append((sec, state))
            for w in watches:
                state = apply(state, w, None, limits)
        if not states:
            continue
        tls = [timeline_from_history(user, s.history) for _, s in states]
        u = user_vectors(candidates, tls, [attrs] * len(tls), candidate_cfg)
        scores = (u @ item_matrix.T).numpy()  # [P, N]
        watched: set[int] = set()
        all_secs = sorted(seconds)
        live = UserState(user_id=user)
        for p_event in profile:
            live = apply(live, p_event, None, limits)
        for k, (sec, _before) in enumerate(states):
            for w in seconds[all_secs[k]]:
                live = apply(live, w, None, limits)
            watched.update(w.item_id for w in seconds[all_secs[k]])
            page_items = [w.item_id for w in seconds[sec]]
            order = np.argsort(-scores[k], kind="stable")
            pool = [int(i) for i in item_ids[order[: top + len(watched) + len(page_items)]]]
            pool = [i for i in pool if i not in watched and i not in page_items][:top]
            neg = [int(i) for i in rng.choice(pool, size=min(negatives, len(pool)), replace=False)]
            shown = page_items + neg
            cands = [
                Candidate(i, "candidate", float(scores[k][col[i]]) if i in col else 0.0)
                for i in shown
            ]
            feats = impression_features(live, cands, items, sec)
            secs = np.array([w.watch_seconds for w in seconds[sec]] + [0.0] * len(neg))
            out.pages.append(Page(user, sec, feats, secs > 0, secs))
            # the page was shown: later pages see it in the impression counters, so the ranker
            # can learn that an item shown before and not watched is less likely to be watched
            page = ImpressionEvent(
                event_id=f"ml-page-{user}-{int(sec)}",
                user_id=user,
                items=[ShownItem(item_id=i, position=p) for p, i in enumerate(shown)],
                ts=sec,
            )
            live = apply(live, page, None, limits)
    return out
