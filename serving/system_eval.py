"""What a user is served, measured offline: the request path end to end (``eval system``).

Every test user's state is built by replaying their visible events through the stream's own
``stream.state.apply`` (exactly the value a worker would hold in RocksDB;
:func:`model.blend_pages.blend_pages` builds it while it builds the ranker's pages), then the
serving
code (:class:`serving.recommend.Recommender`, both sources, the merge, the ranker) answers a
request for the top 100 at the target second. HR@10 / NDCG@10 are read from the served top 10,
R@50 / R@100 from the served top 100, with the protocol's metric code
(:func:`model.metrics.user_metrics`). Each source alone is read from the same merge: the
items a source nominated, in its own order.

Unlike ``eval candidates``, nothing outside what serving knows is used: the served list
excludes only the items in the state's rolling history (the last ``history_length`` watches),
so an item watched longer ago than that may come back, and counts as a miss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from tqdm import tqdm

from model.metrics import METRIC_NAMES, user_metrics
from model.ranking_features import SOURCES
from serving.recommend import Recommender
from stream.events import RecommendationRequest
from stream.state import UserState

TOP = 100
BATCH = 64  # users answered per call, as a worker's micro-batch (each answer is its own)


def served_metrics(
    rec: Recommender,
    states: Mapping[int, UserState],
    targets: Mapping[int, frozenset[int]],
    at: Mapping[int, float],
    history: Mapping[int, Iterable[int]] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Mean metrics of the served top-k and of each source alone, over ``targets``' users.

    Also ``users`` (how many were served) and ``repeat_share``: the share of served top-10
    slots holding an item from the user's full visible history (``history``), which the
    rolling state no longer remembers.
    """
    users = sorted(targets)
    names = ["served", *(f"source:{s}" for s in SOURCES if s != "i2i" or rec.retrieve_i2i)]
    totals = {n: dict.fromkeys(METRIC_NAMES, 0.0) for n in names}
    repeats = 0
    bar = tqdm(total=len(users), desc="served", unit="user", disable=not progress)
    for lo in range(0, len(users), BATCH):
        batch = users[lo : lo + BATCH]
        states_b = [states[u] for u in batch]
        reqs = [RecommendationRequest(request_id=f"eval-{u}", user_id=u, k=TOP) for u in batch]
        vectors = rec.vectors(states_b, reqs)
        blends, _ = rec.blends(states_b, vectors)
        served = rec.ranked_ids(states_b, reqs, [at[u] for u in batch], blends)
        for u, top, blend in zip(batch, served, blends, strict=True):
            ranked = {"served": np.asarray(top, dtype=np.int64)}
            for s in SOURCES:
                if f"source:{s}" in totals:
                    rank = blend.ranks[s]
                    own = np.flatnonzero(np.isfinite(rank))
                    ranked[f"source:{s}"] = blend.ids[own[np.argsort(rank[own])]][:TOP]
            for n, ids in ranked.items():
                m = user_metrics(ids, targets[u])
                for k in METRIC_NAMES:
                    totals[n][k] += m[k]
            if history is not None:
                seen = set(history[u])
                repeats += sum(int(i) in seen for i in ranked["served"][:10])
        bar.update(len(batch))
    bar.close()
    out = {n: {k: v / len(users) for k, v in t.items()} for n, t in totals.items()}
    out["served"]["repeat_share"] = repeats / (10 * len(users)) if history is not None else 0.0
    out["served"]["users"] = float(len(users))
    return out
