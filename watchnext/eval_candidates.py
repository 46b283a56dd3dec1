"""``watchnext eval candidates``: the ml100k-lastsecond table, watchnext beside the baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.datasets.movielens import load
from model.evaluate_candidates import over_seeds, run_baselines
from model.metrics import METRIC_NAMES
from model.train_candidate import TrainConfig

PAPER_FAITHFUL = "watchnext-mean"


def run_eval_candidates(
    data: Path, seeds: int, as_json: bool, depth: int, loss: str, epochs: int
) -> int:
    """Evaluate and print the table (and a final JSON line with ``as_json``)."""
    ml = load(data)
    print(f"{data}: {len(ml)} ratings ({ml.layout}); protocol ml100k-lastsecond; {seeds} seed(s)")
    models: dict[str, dict[str, Any]] = {
        name: {k: round(v, 4) for k, v in m.items()} for name, m in run_baselines(ml).items()
    }
    cfg = TrainConfig(epochs=epochs, loss=loss, progress=True)  # tqdm writes to stderr
    model_cfg = {"depth": depth, "width_factor": 0.25, "embed_dim": 64, "out_dim": 64}
    res = over_seeds(ml, model_cfg, cfg, seeds)
    models[PAPER_FAITHFUL] = {k: round(v, 4) for k, v in res.items()}
    print(f"\n{'model':18s}" + "".join(f"{k:>10s}" for k in METRIC_NAMES))
    for name, m in models.items():
        row = "".join(f"{m[k]:10.4f}" for k in METRIC_NAMES)
        std = (
            "  ±" + "/".join(f"{m[k + '_std']:.4f}" for k in METRIC_NAMES)
            if "HR10_std" in m
            else ""
        )
        print(f"{name:18s}{row}{std}")
    print(
        f"\nwatchnext training: {res['examples_per_s']:,.0f} examples/s on this CPU "
        f"({loss} softmax), epochs chosen on validation: {res['epochs']:.0f}"
    )
    if as_json:
        print(
            json.dumps(
                {"models": models, "paper_faithful": PAPER_FAITHFUL, "project_best": PAPER_FAITHFUL}
            )
        )
    return 0
