"""The ``ml100k-lastsecond`` evaluation of the candidate generator and the in-house baselines.

Model selection never sees the test targets: the number of epochs is chosen on the validation
split (the last second of the history), then the model is retrained on the full visible history
for that many epochs and scored once on the test targets.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

import numpy as np

from model.baselines import interaction_matrix, item_knn_scores, most_pop_scores
from model.datasets.movielens import MovieLens
from model.examples import UserContext
from model.features import Vocab
from model.metrics import METRIC_NAMES, evaluate_scores
from model.protocol import Split, split_test_validation
from model.train_candidate import TrainConfig, Trained, fit, score_users


def user_context(data: MovieLens) -> UserContext:
    """Demographic vocabularies from the users file (no ratings involved, so no leakage)."""
    users = {
        u.user_id: (
            float(u.age) if u.age is not None else None,
            u.gender,
            u.occupation,
            (u.zip or "?")[:1],
        )
        for u in data.users.values()
    }
    return UserContext(
        gender=Vocab.build(v[1] for v in users.values()),
        occupation=Vocab.build(v[2] for v in users.values()),
        region=Vocab.build(v[3] for v in users.values()),
        users=users,
    )


def _excluded(split: Split) -> dict[int, list[int]]:
    return {u: [i for s in t.items for i in s] for u, t in split.timelines.items()}


def evaluate_model(trained: Trained, split: Split, cfg: TrainConfig) -> dict[str, float]:
    users = sorted(split.targets)
    scores, ids = score_users(trained, split.timelines, users, cfg)
    return evaluate_scores(scores, users, split.targets, _excluded(split), ids)


def run_model(
    data: MovieLens, model_cfg: dict[str, Any], cfg: TrainConfig, select_epochs: bool = True
) -> dict[str, float]:
    """Select epochs on validation, retrain on the test split's history, return test metrics."""
    test, val = split_test_validation(data)
    ctx = user_context(data)
    epochs = cfg.epochs
    if select_epochs:
        best = {"ndcg": -1.0, "epoch": 0, "since": 0}

        def on_epoch(epoch: int, trained: Trained) -> bool:
            m = evaluate_model(trained, val, cfg)
            if m["NDCG10"] > best["ndcg"]:
                best.update(ndcg=m["NDCG10"], epoch=epoch + 1, since=0)
            else:
                best["since"] += 1
            return best["since"] < 5

        fit(val.timelines, ctx, model_cfg, cfg, on_epoch)
        epochs = max(1, int(best["epoch"]))
    trained = fit(test.timelines, ctx, model_cfg, replace(cfg, epochs=epochs))
    out = evaluate_model(trained, test, cfg)
    out["epochs"] = epochs
    out["examples_per_s"] = trained.examples_per_s
    return out


def run_baselines(data: MovieLens) -> dict[str, dict[str, float]]:
    test, _ = split_test_validation(data)
    items = np.array(sorted(set(data.items_col.tolist())))
    index = {int(i): c for c, i in enumerate(items)}
    users = sorted(test.targets)
    x = interaction_matrix(test, len(items), index)
    excl = _excluded(test)
    return {
        "MostPop": evaluate_scores(most_pop_scores(x), users, test.targets, excl, items),
        "ItemKNN": evaluate_scores(item_knn_scores(x), users, test.targets, excl, items),
    }


def over_seeds(
    data: MovieLens, model_cfg: dict[str, Any], cfg: TrainConfig, seeds: int
) -> dict[str, float]:
    """Mean and std of each metric over ``seeds`` seeds (plus the median, which targets use)."""
    runs = [run_model(data, model_cfg, replace(cfg, seed=s)) for s in range(seeds)]
    out: dict[str, float] = {}
    for k in METRIC_NAMES:
        vals = [r[k] for r in runs]
        out[k] = statistics.mean(vals)
        out[f"{k}_std"] = statistics.pstdev(vals)
        out[f"{k}_median"] = statistics.median(vals)
    out["epochs"] = statistics.median(r["epochs"] for r in runs)
    out["examples_per_s"] = statistics.median(r["examples_per_s"] for r in runs)
    return out
