"""The retrainer's promotion gate: can the new models be told apart from the served ones?

A gate that compares recall on hold-out watches neither model can score decides nothing: in
the demo of issue 17 every hold-out user had watched only brand-new uploads, both recalls were
0.0 and the cycle was "promoted" on a tie of zeros. So the candidate gate

* compares the two generators only on the hold-out watches of items **both** can score (items
  in both vocabularies), per user, paired: the same users, the same targets, the same history;
* reports separately how much of the hold-out it could not compare (watches of items one of the
  models has no vector for: new-item coverage), since that is what a retrain adds, not what
  recall can measure;
* refuses to decide on fewer than a stated number of comparable users, so a handful of users
  cannot promote or reject a model by noise (the caller keeps the served pair and says so).

The ranker is gated on its own validation loss: the new ranker and the served one score the
same validation pages (the newest impressions of the log), and the new weights ship only when
their watch-time-weighted per-user loss is not worse than the served weights' beyond a relative
tolerance; otherwise the served weights ship again with the grown catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.candidate_inputs import user_vectors
from model.evaluate_ranking import split_scores, weighted_pair_loss
from model.protocol import UserTimeline
from model.ranking_data import PageSet
from model.train_candidate import TrainConfig, Trained


def split_window(
    timelines: Mapping[int, UserTimeline], cut: float
) -> tuple[dict[int, UserTimeline], dict[int, set[int]]]:
    """(every user's timeline before ``cut``, items each user watched at or after ``cut``) for
    users with activity on both sides."""
    before, targets = {}, {}
    for user, tl in timelines.items():
        k = int(np.searchsorted(np.asarray(tl.seconds), cut, side="left"))
        if 0 < k < len(tl.seconds):
            before[user] = tl.before(k)
            targets[user] = {i for s in tl.items[k:] for i in s}
    return before, targets


@dataclass(frozen=True)
class Holdout:
    """The hold-out window's targets, split into what both models can score and what not."""

    comparable: dict[int, set[int]]  # user -> watched items both vocabularies hold
    watches: int  # hold-out (user, item) targets in all
    unscorable_by_current: int  # of them, items the served generator has no vector for
    unscorable_by_new: int  # of them, items the new generator has no vector for

    def coverage(self) -> dict[str, Any]:
        """What the gate reports about the part it cannot compare."""
        n = max(self.watches, 1)
        return {
            "holdout_watches": self.watches,
            "comparable_users": len(self.comparable),
            "comparable_watches": sum(len(t) for t in self.comparable.values()),
            "new_item_share_current": round(self.unscorable_by_current / n, 4),
            "new_item_share_new": round(self.unscorable_by_new / n, 4),
        }


def holdout(
    targets: Mapping[int, set[int]], known_new: set[int], known_current: set[int] | None
) -> Holdout:
    """Split ``targets`` by which vocabularies hold their items (``known_current`` None: there
    is no served generator, everything the new one knows is comparable)."""
    both = known_new if known_current is None else known_new & known_current
    comparable = {u: t & both for u, t in targets.items() if t & both}
    flat = [i for t in targets.values() for i in t]
    return Holdout(
        comparable,
        len(flat),
        0 if known_current is None else sum(i not in known_current for i in flat),
        sum(i not in known_new for i in flat),
    )


def per_user_recall(
    trained: Trained,
    cfg: TrainConfig,
    history: Mapping[int, UserTimeline],
    targets: Mapping[int, set[int]],
    users: Mapping[int, Any],
    k: int,
) -> dict[int, float]:
    """Each user's |top-k ∩ targets| / min(|targets|, k), items in their history excluded."""
    order = sorted(targets)
    if not order:
        return {}
    u = user_vectors(trained, [history[x] for x in order], [users.get(x) for x in order], cfg)
    scores = (u @ trained.model.item_vectors()[1:].detach().T).numpy()
    ids = np.asarray(trained.items.ids)
    out: dict[int, float] = {}
    for row, user in enumerate(order):
        seen = {i for s in history[user].items for i in s}
        s = np.where(np.isin(ids, list(seen)), -np.inf, scores[row])
        top = ids[np.argpartition(-s, min(k, len(s) - 1))[:k]]
        out[user] = len(set(top.tolist()) & targets[user]) / min(len(targets[user]), k)
    return out


@dataclass
class CandidateVerdict:
    """The candidate gate's decision and the figures behind it."""

    decision: str  # promote | reject | undecided
    metrics: dict[str, Any] = field(default_factory=dict)


def judge_candidates(
    new: Mapping[int, float], current: Mapping[int, float], tolerance: float, min_users: int
) -> CandidateVerdict:
    """Paired comparison of per-user recall on the same comparable users.

    ``undecided`` below ``min_users``. Else ``reject`` only when the new model is measurably
    worse: the upper end of the normal 95 % interval of the mean paired difference (new −
    current) is below ``−tolerance``; otherwise ``promote``. The burden of proof is on
    rejecting, because a retrain also brings what recall on the comparable watches cannot see
    (the new items and fresher vectors), so a tie within the noise should not hold it back.
    Both means and the interval are reported, so an operator sees a tie from a win.
    """
    users = sorted(set(new) & set(current))
    metrics: dict[str, Any] = {"compared_users": len(users)}
    if len(users) < min_users:
        return CandidateVerdict("undecided", metrics)
    a = np.array([new[u] for u in users])
    b = np.array([current[u] for u in users])
    diff = a - b
    mean = float(diff.mean())
    half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else float("inf")
    metrics.update(
        new_recall=round(float(a.mean()), 4),
        current_recall=round(float(b.mean()), 4),
        recall_diff=round(mean, 4),
        recall_diff_ci95=[float(round(mean - half, 4)), float(round(mean + half, 4))],
    )
    decision = "reject" if mean + half < -tolerance else "promote"
    return CandidateVerdict(decision, metrics)


def ranker_loss(ranker: Any, pages: PageSet) -> float:
    """The paper's weighted per-user loss of ``ranker`` on ``pages``: the share of watch time
    on same-page (watched, unwatched) pairs that it orders wrongly (lower is better; what the
    ranker's training early-stops on). NaN when the pages hold no such pair."""
    flat = ranker.logits([p.features for p in pages.pages])
    return float(weighted_pair_loss(pages.pages, split_scores(pages.pages, flat)))


def judge_ranker(
    new_loss: float, current_loss: float | None, relative_tolerance: float
) -> tuple[bool, dict[str, Any]]:
    """(ship the new weights?, figures): new ships unless its validation loss exceeds the served
    ranker's by more than ``relative_tolerance`` (a share of the served loss). Pages with no
    (watched, unwatched) pair give NaN: nothing to judge on, so the served weights stay."""
    figures: dict[str, Any] = {"ranker_val_loss_new": round(new_loss, 5)}
    if current_loss is None:
        return True, figures
    figures["ranker_val_loss_current"] = round(current_loss, 5)
    if np.isnan(new_loss) or np.isnan(current_loss):
        return False, figures
    return new_loss <= current_loss * (1 + relative_tolerance), figures
