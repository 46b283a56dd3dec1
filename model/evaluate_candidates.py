"""The ``ml100k-lastsecond`` evaluation of the candidate generator and the in-house baselines.

Model selection never sees the test targets: the number of epochs is chosen on the validation
split (the last second of the history), then the model is retrained on the full visible history
for that many epochs and scored once on the test targets.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from model.baselines import EASE, USER_CHUNK, Interactions, ItemKNN, MostPop, chunks, ease_bytes
from model.candidate_inputs import user_vectors
from model.datasets.movielens import MovieLens
from model.examples import UserContext
from model.metrics import METRIC_NAMES, evaluate_chunks
from model.protocol import Split, UserTimeline, last_second_split, timelines
from model.train_candidate import TrainConfig, Trained, fit, item_matrix


def user_context(data: MovieLens) -> UserContext:
    """Demographic vocabularies from the users file (no ratings involved, so no leakage).

    Geography is the zip code's first digit (a US region); MovieLens has no device.
    """
    return UserContext.build(
        {
            u.user_id: {
                "age": u.age,
                "gender": u.gender,
                "occupation": u.occupation,
                "region": (u.zip or "?")[:1],
            }
            for u in data.users.values()
        }
    )


def _excluded(split: Split) -> dict[int, list[int]]:
    return {u: [i for s in t.items for i in s] for u, t in split.timelines.items()}


def evaluate_model(trained: Trained, split: Split, cfg: TrainConfig) -> dict[str, float]:
    """Metrics of the served scores (user vector · item vectors), ``USER_CHUNK`` users at a
    time: a [users x items] score matrix is never held."""
    users = sorted(split.targets)
    items, ids = item_matrix(trained)

    def scored() -> Iterator[tuple[list[int], np.ndarray]]:
        for start in range(0, len(users), USER_CHUNK):
            part = users[start : start + USER_CHUNK]
            attrs = [trained.context.users.get(u) for u in part]
            with torch.no_grad():
                u = user_vectors(trained, [split.timelines.get(u) for u in part], attrs, cfg)
                scores = (u @ items.T).numpy()
            yield part, scores

    return evaluate_chunks(scored(), split.targets, _excluded(split), ids)


@dataclass(frozen=True)
class Protocol:
    """A dataset under the last-second protocol: test and validation splits plus user context."""

    test: Split
    val: Split
    context: UserContext

    @classmethod
    def movielens(cls, data: MovieLens) -> Protocol:
        return cls.from_timelines(timelines(data), user_context(data))

    @classmethod
    def from_timelines(cls, tl: dict[int, UserTimeline], ctx: UserContext) -> Protocol:
        test = last_second_split(tl)
        return cls(test, last_second_split(test.timelines), ctx)


def validation_metrics(
    proto: Protocol, model_cfg: dict[str, Any], cfg: TrainConfig, patience: int = 5
) -> dict[str, float]:
    """Train on the validation split's history; the best epoch's validation metrics (by NDCG@10,
    stopping after ``patience`` epochs without improvement). Test targets are never touched."""
    best: dict[str, float] = {"NDCG10": -1.0, "epochs": 0.0}
    since = [0]

    def on_epoch(epoch: int, trained: Trained) -> bool:
        m = evaluate_model(trained, proto.val, cfg)
        if m["NDCG10"] > best["NDCG10"]:
            best.update(m, epochs=float(epoch + 1))
            since[0] = 0
        else:
            since[0] += 1
        return since[0] < patience

    fit(proto.val.timelines, proto.context, model_cfg, cfg, on_epoch)
    return best


def run_model(
    proto: Protocol, model_cfg: dict[str, Any], cfg: TrainConfig, select_epochs: bool = True
) -> dict[str, float]:
    """Select epochs on validation, retrain on the test split's history, return test metrics."""
    epochs = cfg.epochs
    if select_epochs:
        epochs = max(1, int(validation_metrics(proto, model_cfg, cfg)["epochs"]))
    trained = fit(proto.test.timelines, proto.context, model_cfg, replace(cfg, epochs=epochs))
    out = evaluate_model(trained, proto.test, cfg)
    out["epochs"] = epochs
    out["examples_per_s"] = trained.examples_per_s
    return out


DEFAULT_MEMORY_MB = 4096


def run_baselines(
    proto: Protocol, memory_mb: float = DEFAULT_MEMORY_MB
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """MostPop, ItemKNN and EASE (λ = 300) on the same split, catalogue = every item seen.

    Returns (metrics by baseline, skipped baseline -> why): EASE is skipped when its dense
    closed form (:func:`model.baselines.ease_bytes`) exceeds ``memory_mb``; the sparse
    neighbour model (ItemKNN) is then the item-to-item baseline.
    """
    test = proto.test
    seen = {i for t in test.timelines.values() for s in t.items for i in s}
    items = np.array(sorted(seen | {i for t in test.targets.values() for i in t}))
    x = Interactions.of(test, items)
    excl = _excluded(test)
    out = {
        "MostPop": evaluate_chunks(chunks(MostPop(x)), test.targets, excl, items),
        "ItemKNN": evaluate_chunks(chunks(ItemKNN(x)), test.targets, excl, items),
    }
    skipped: dict[str, str] = {}
    need_mb = ease_bytes(len(items)) / 2**20
    if need_mb <= memory_mb:
        out["EASE"] = evaluate_chunks(chunks(EASE(x)), test.targets, excl, items)
    else:
        skipped["EASE"] = (
            f"its [{len(items)}, {len(items)}] float64 inverse needs {need_mb:,.0f} MB, over the "
            f"{memory_mb:,.0f} MB budget (--memory-mb); ItemKNN is the item-to-item baseline"
        )
    return out, skipped


def over_seeds(
    proto: Protocol, model_cfg: dict[str, Any], cfg: TrainConfig, seeds: int
) -> dict[str, float]:
    """Mean and std of each metric over ``seeds`` seeds (plus the median, which targets use)."""
    runs = [run_model(proto, model_cfg, replace(cfg, seed=s)) for s in range(seeds)]
    out: dict[str, float] = {}
    for k in METRIC_NAMES:
        vals = [r[k] for r in runs]
        out[k] = statistics.mean(vals)
        out[f"{k}_std"] = statistics.pstdev(vals)
        out[f"{k}_median"] = statistics.median(vals)
    out["epochs"] = statistics.median(r["epochs"] for r in runs)
    out["examples_per_s"] = statistics.median(r["examples_per_s"] for r in runs)
    return out
