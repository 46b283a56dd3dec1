"""``watchnext bench train``: candidate-training examples/s on this machine.

Three workloads, same training step as ``fit`` (sampled softmax with logQ, sparse embedding
gradients): MovieLens-100K rollback examples; the same labels trained sequence-wise (the
``sequence`` encoder: one pass per user window predicts every next second); a synthetic
1M-item catalogue (Zipf item popularity, 50-item history bags). Each reports examples/s after
a warm-up, on the CPU and, when one is visible to torch, on a GPU as well.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.candidate import CandidateConfig, CandidateModel
from model.datasets.movielens import load
from model.evaluate_candidates import user_context
from model.protocol import split_test_validation
from model.sampled_softmax import NegativeSampler
from model.train_candidate import TrainConfig, TrainStep, fit

SEQUENCE_MODEL = {
    "depth": 2,
    "width_factor": 0.25,
    "history_encoder": "sequence",
}  # the sequence-wise source, at the rollback row's tower


def movielens_rate(
    path: Path, negatives: int, epochs: int = 3, model: dict[str, Any] | None = None
) -> float:
    """examples/s of ``fit`` on ML-100K's test-split history (first epoch excluded).

    An example is one predicted label either way: one rollback example (its own 50-item bag),
    or, for the ``sequence`` encoder, one next-second label of a window encoded once.
    """
    model = model or {"depth": 2, "width_factor": 0.25}
    data = load(path)
    test, _ = split_test_validation(data)
    cfg = TrainConfig(
        epochs=1,
        loss="sampled",
        negatives=negatives,
        per_user=10_000,
        batch_size=1024,
        progress=False,
    )
    fit(test.timelines, user_context(data), model, cfg)  # warm-up
    cfg = TrainConfig(
        epochs=epochs,
        loss="sampled",
        negatives=negatives,
        per_user=10_000,
        batch_size=1024,
        progress=True,
    )
    return fit(test.timelines, user_context(data), model, cfg).examples_per_s


def synthetic_rate(
    n_items: int, negatives: int, steps: int = 30, batch: int = 1024, seed: int = 0
) -> float:
    """examples/s of the training step on a synthetic catalogue of ``n_items`` items."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    p = pop / pop.sum()
    config = CandidateConfig(
        n_items=n_items + 1,
        categorical={"gender": 3, "occupation": 22, "region": 11, "device": 5},
        n_continuous=6,
    )
    model = CandidateModel(config)
    sampler = NegativeSampler(torch.from_numpy(np.r_[0.0, p * 1e7]), alpha=0.75, seed=seed)
    step = TrainStep(model, TrainConfig(loss="sampled", negatives=negatives), sampler)
    batches = []
    for _ in range(4):
        hist = torch.from_numpy(rng.choice(n_items, size=(batch, 50), p=p) + 1)
        labels = torch.from_numpy(rng.choice(n_items, size=batch, p=p) + 1)
        cats = torch.from_numpy(rng.integers(0, 3, (batch, 4)))
        batches.append((hist, cats, torch.rand(batch, 6), labels))
    for b in batches[:2]:
        step(*b)  # warm-up
    started = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    return steps * batch / (time.perf_counter() - started)


def run_train_bench(movielens: Path, items: int, negatives: int, as_json: bool) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict[str, Any] = {
        "negatives": negatives,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    print(f"ML-100K rollback examples, sampled softmax with {negatives} negatives ...", flush=True)
    result["movielens_examples_per_s"] = round(movielens_rate(movielens, negatives))
    print("ML-100K next-second labels, sequence-wise (one pass per window) ...", flush=True)
    result["movielens_sequence_labels_per_s"] = round(
        movielens_rate(movielens, negatives, model=SEQUENCE_MODEL)
    )
    print(f"synthetic catalogue of {items:,} items ...", flush=True)
    result["synthetic_items"] = items
    result["synthetic_examples_per_s"] = round(synthetic_rate(items, negatives))
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
    for k, v in result.items():
        print(f"{k:28s} {v}")
    if as_json:
        print(json.dumps(result))
    return 0
