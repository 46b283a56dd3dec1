"""New items before the next retrain: recall with and without the freshness overlay.

Part of ``watchnext eval freshness``, on the same synthetic world (uploads all through the
window, popularity spiking after upload). The last retrain is at ``T``; the overlay is asked at
``Q`` = ``T`` + 2 days, when the items uploaded in (T, Q] exist only as upload events and as the
watches of their first watchers. For every user who watches such an item after ``Q`` (until the
window end), the candidate generator trained at ``T`` retrieves the top 50 for the user's
history at ``Q`` (watched items excluded):

* **without overlay**: the snapshot's index alone; it cannot hold the new items (0 by design);
* **with overlay**: the snapshot's top 50 merged by score with the overlay's top 50, the overlay
  folded in from the watches in (T, Q] and the channel prior (:mod:`serving.overlay`).

``new_item_recall`` = mean over those users of |top-50 ∩ new items they watch after Q| /
min(that count, 50); ``recall_all`` the same over every item they watch after Q, to show what
the new items displace. Settings of the fold-in are chosen on a validation window three days
earlier (T − 3 d, Q − 3 d), never on the test window, by ``recall_all`` (what users get
overall, new and old items together).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from model.candidate_inputs import user_vectors
from model.examples import UserContext
from model.item_table import ItemTable
from model.protocol import UserTimeline
from model.ranking_data import item_meta
from model.ranking_features import ItemMeta
from model.shipped import PROJECT_BEST
from model.synth import DAY, World
from model.train_candidate import TrainConfig, Trained, fit
from serving.overlay import (
    FoldInConfig,
    ItemSpace,
    NewItem,
    build_overlay,
    context_embedder,
    merge_by_score,
)
from stream.events import UploadEvent

K = 50
GRID = [
    FoldInConfig(prior_weight=w, context=c, boost=g, watchers=m)
    for m in ("users", "items")
    for w in (0.5, 2.0, 8.0)
    for c in (10, 20)
    for g in (1.0, 2.0, 4.0)
]


def _recall(top: np.ndarray, targets: set[int]) -> float:
    return len(set(top.tolist()) & targets) / min(len(targets), K)


def _cut(timelines: dict[int, UserTimeline], t: float) -> dict[int, UserTimeline]:
    out = {}
    for user, tl in timelines.items():
        k = int(np.searchsorted(np.asarray(tl.seconds), t, side="left"))
        if k > 0:
            out[user] = tl.before(k)
    return out


def _watches(timelines: dict[int, UserTimeline]) -> Iterable[tuple[int, float, int, int]]:
    """(user, second, item, index of that second in the user's timeline) in time order."""
    rows = [
        (s, user, item, k)
        for user, tl in timelines.items()
        for k, (s, items) in enumerate(zip(tl.seconds, tl.items, strict=True))
        for item in items
    ]
    rows.sort()
    for s, user, item, k in rows:
        yield user, s, item, k


class Window:
    """One (T, Q, end) split of the world: the model trained at T and its evaluation at Q."""

    def __init__(
        self,
        world: World,
        timelines: dict[int, UserTimeline],
        context: UserContext,
        cfg: TrainConfig,
        retrain: float,
        query: float,
        end: float,
    ) -> None:
        self.query, self.cfg = query, cfg
        uploads = {e.item_id: e for _, e in world.uploads() if isinstance(e, UploadEvent)}
        self.meta: dict[int, ItemMeta] = {i: item_meta(e) for i, e in uploads.items()}
        self.trained: Trained = fit(_cut(timelines, retrain), context, PROJECT_BEST.model, cfg)
        vectors = self.trained.model.item_vectors()[1:].detach().numpy()
        self.space = ItemSpace.of(
            np.asarray(self.trained.items.ids),
            vectors,
            self.meta,
            context_embedder(self.trained, cfg),
        )
        self.table = ItemTable(self.meta)
        self.new = {i for i, e in uploads.items() if retrain < e.ts <= query}
        # what the stream knows at Q: each new item's first watchers and their contexts
        self.seen_by: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
        history: dict[int, list[int]] = {}
        for user, s, item, _ in _watches(timelines):
            if s > query:
                break
            if s > retrain and item in self.new:
                self.seen_by.setdefault(item, []).append((user, tuple(history.get(user, [])[-20:])))
            history.setdefault(user, []).append(item)
        # who is asked at Q, and what they watch after it
        before_q = _cut(timelines, query)
        self.users, self.targets_new, self.targets_all = [], [], []
        for user, tl in timelines.items():
            if user not in before_q:
                continue
            seen = {i for s in before_q[user].items for i in s}
            later = {
                i
                for s, items in zip(tl.seconds, tl.items, strict=True)
                if query < s <= end
                for i in items
            } - seen
            new = later & self.new
            if new:
                self.users.append(user)
                self.targets_new.append(new)
                self.targets_all.append(later)
        hist = [before_q[u] for u in self.users]
        attrs = [context.users.get(u) for u in self.users]
        self.u: np.ndarray = user_vectors(self.trained, hist, attrs, cfg).numpy()
        self.watched = [
            np.unique(np.asarray([i for s in h.items for i in s], dtype=np.int64)) for h in hist
        ]
        scores = self.u @ vectors.T
        ids = np.asarray(self.trained.items.ids, dtype=np.int64)
        self.main: list[tuple[np.ndarray, np.ndarray]] = []
        for b, seen_ids in enumerate(self.watched):
            row = np.where(np.isin(ids, seen_ids), -np.inf, scores[b])
            top = np.argsort(-row, kind="stable")[:K]
            self.main.append((ids[top], row[top].astype(np.float32)))

    def _new_items(self, prior: bool, watchers: bool) -> dict[int, NewItem]:
        """The new items as the stream knows them at Q (without the channel/topic when
        ``prior`` is off, without their watchers when ``watchers`` is)."""
        out = {}
        for i in self.new:
            m = self.meta[i]
            meta = m if prior else ItemMeta(upload_ts=m.upload_ts, duration=m.duration)
            contexts = [c for _, c in self.seen_by.get(i, [])] if watchers else []
            out[i] = NewItem(meta, contexts)
        return out

    def recall(self, fold: FoldInConfig | None, prior: bool = True, watchers: bool = True) -> dict:
        """New-item and all-item recall@50 at Q with this fold-in (None: no overlay)."""
        tops = [ids for ids, _ in self.main]
        covered = 0
        if fold is not None:
            overlay = build_overlay(self.space, self.table, self._new_items(prior, watchers), fold)
            covered = len(overlay)
            fresh = overlay.search(self.u, K, self.watched)
            tops = [
                merge_by_score(ids, sc, *fresh[b], K)[0] for b, (ids, sc) in enumerate(self.main)
            ]
        new_r = [_recall(t, g) for t, g in zip(tops, self.targets_new, strict=True)]
        all_r = [_recall(t, g) for t, g in zip(tops, self.targets_all, strict=True)]
        return {
            "new_item_recall": round(float(np.mean(new_r)), 4),
            "recall_all": round(float(np.mean(all_r)), 4),
            "overlay_items": covered,
        }


def run_overlay_eval(
    world: World, timelines: dict[int, UserTimeline], context: UserContext, epochs: int
) -> dict[str, Any]:
    """Validation-chosen fold-in, then the test window's rows (module docstring)."""
    end = max(t.seconds[-1] for t in timelines.values())
    cfg = replace(PROJECT_BEST.train, epochs=epochs, progress=True)
    print("overlay: training the validation-window snapshot (retrain at end - 6 d)")
    val = Window(world, timelines, context, cfg, end - 6 * DAY, end - 4 * DAY, end - 3 * DAY)
    sweep = [(f, val.recall(f)) for f in GRID]
    # chosen on what users get overall: recall of all next watches, new items included
    chosen, best = max(sweep, key=lambda fr: (fr[1]["recall_all"], fr[1]["new_item_recall"]))
    print(f"overlay: chosen on validation {asdict(chosen)} -> {best}")
    print("overlay: training the test-window snapshot (retrain at end - 3 d)")
    test = Window(world, timelines, context, cfg, end - 3 * DAY, end - 1 * DAY, end)
    rows = {
        "without overlay": test.recall(None),
        "overlay, channel prior only": test.recall(chosen, watchers=False),
        "overlay, first watchers only": test.recall(chosen, prior=False),
        "overlay (watchers + channel prior)": test.recall(chosen),
    }
    return {
        "protocol": "retrain at T, served at Q = T + 2 d, next watches until Q + 1 d; "
        "validation window 3 d earlier",
        "users": len(test.users),
        "new_items": len(test.new),
        "new_items_watched_before_q": sum(1 for i in test.new if test.seen_by.get(i)),
        "chosen_on_validation": asdict(chosen),
        "validation": {
            "users": len(val.users),
            "sweep": [{**asdict(f), **r} for f, r in sweep],
        },
        "rows": rows,
        "new_item_recall_with_overlay": rows["overlay (watchers + channel prior)"][
            "new_item_recall"
        ],
        "new_item_recall_without_overlay": rows["without overlay"]["new_item_recall"],
    }
