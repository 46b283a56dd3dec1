"""Serving-time inputs of the candidate generator, from whatever holds a user's recent activity.

Training builds examples from :class:`~model.protocol.UserTimeline`; serving has the stream's
per-user state (rolling watch history, search tokens, profile). :func:`timeline_from_history`
turns the latter into the former, and :func:`user_vectors` computes u for a batch of users with
example age 0 (paper §3.3), so the vector served is computed by the same code as in evaluation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from model.examples import HISTORY_LEN, continuous
from model.features import pad_bags
from model.protocol import UserTimeline

if TYPE_CHECKING:  # train_candidate imports this module
    from model.train_candidate import TrainConfig, Trained


class WatchLike(Protocol):
    ts: float
    item_id: int


class ProfileLike(Protocol):
    age: int | None
    gender: str | None
    occupation: str | None
    region: str | None


def user_attrs(profile: ProfileLike | None, device: str | None) -> dict[str, Any]:
    """The context attributes :class:`~model.examples.UserContext` encodes, from a profile."""
    return {
        "age": profile.age if profile else None,
        "gender": profile.gender if profile else None,
        "occupation": profile.occupation if profile else None,
        "region": profile.region if profile else None,
        "device": device,
    }


def timeline_from_history(
    user: int, watches: Sequence[WatchLike], tokens: Sequence[str] = ()
) -> UserTimeline:
    """Group watches by second; the search tokens (already tokenized, no times) count as earlier
    than any request."""
    by_second: dict[float, list[int]] = defaultdict(list)
    for w in watches:
        by_second[float(w.ts)].append(int(w.item_id))
    secs = sorted(by_second)
    searches = ((float("-inf"), tuple(tokens)),) if tokens else ()
    return UserTimeline(
        user, tuple(secs), tuple(tuple(sorted(by_second[s])) for s in secs), searches
    )


@torch.no_grad()
def user_vectors(
    trained: Trained,
    timelines: Sequence[UserTimeline | None],
    attrs: Sequence[Mapping[str, Any] | None],
    cfg: TrainConfig,
) -> torch.Tensor:
    """[B, H] user vectors at serving time (example age 0, the newest ≤ 50 items and tokens)."""
    model = trained.model
    if model.training:  # flipping modes walks every sub-module: not on every event
        model.eval()
    recent = [t.recent(HISTORY_LEN) if t is not None else ([], []) for t in timelines]
    hist = torch.from_numpy(pad_bags([trained.items.rows(r[0]) for r in recent], HISTORY_LEN))
    rank = torch.from_numpy(pad_bags([r[1] for r in recent], HISTORY_LEN))
    now = float("inf")
    searches = [
        trained.tokens.rows(t.tokens_before(now, HISTORY_LEN)) if t is not None else []
        for t in timelines
    ]
    search = torch.from_numpy(pad_bags(searches, HISTORY_LEN))
    encoded = [trained.context.encode(a) for a in attrs]
    cats = np.array([e[0] for e in encoded], dtype=np.int64).reshape(len(attrs), -1)
    ages = np.array([e[1] for e in encoded], dtype=np.float64)
    if not cfg.use_demographics:
        cats, ages = np.zeros_like(cats), np.zeros_like(ages)
    cont = continuous(ages, np.zeros(len(attrs)))
    return model.user_vector(hist, search, torch.from_numpy(cats), torch.from_numpy(cont), rank)
