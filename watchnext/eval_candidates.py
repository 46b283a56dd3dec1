"""``watchnext eval candidates``: the ml100k-lastsecond table, watchnext beside the baselines.

Prints MostPop, ItemKNN and EASE (in-house, same split and metric code), the paper-faithful
configuration and the project's best shipped configuration (:mod:`model.shipped`), each as the
mean ± std over seeds; the targets in ``evaluation.md`` compare medians, also in the JSON.
``--select`` instead reruns the validation-only comparison that chose the shipped configs.
"""

from __future__ import annotations

import json
import resource
from dataclasses import replace
from pathlib import Path
from typing import Any

from model.datasets.movielens import load
from model.evaluate_candidates import (
    DEFAULT_MEMORY_MB,
    Protocol,
    over_seeds,
    run_baselines,
    validation_metrics,
)
from model.metrics import METRIC_NAMES
from model.shipped import PAPER_FAITHFUL, PROJECT_BEST, SELECTION_GRID, SHIPPED, Shipped


def _override(s: Shipped, depth: int | None, loss: str | None, epochs: int | None) -> Shipped:
    model = dict(s.model) if depth is None else {**s.model, "depth": depth}
    train = s.train
    if loss is not None:
        train = replace(train, loss=loss)
    if epochs is not None:
        train = replace(train, epochs=epochs)
    return Shipped(s.name, model, replace(train, progress=True))  # tqdm writes to stderr


def _print_table(models: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'model':22s}" + "".join(f"{k:>10s}" for k in METRIC_NAMES) + "   (± std)")
    for name, m in models.items():
        row = "".join(f"{m[k]:10.4f}" for k in METRIC_NAMES)
        std = (
            "  ±" + "/".join(f"{m[k + '_std']:.4f}" for k in METRIC_NAMES)
            if "HR10_std" in m
            else ""
        )
        print(f"{name:22s}{row}{std}")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_eval_candidates(
    data: Path,
    seeds: int,
    as_json: bool,
    depth: int | None = None,
    loss: str | None = None,
    epochs: int | None = None,
    names: list[str] | None = None,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> int:
    """Evaluate and print the table (and a final JSON line with ``as_json``)."""
    unknown = sorted(set(names or ()) - set(SHIPPED))
    if unknown:
        raise SystemExit(f"unknown --models {','.join(unknown)}; choose from {','.join(SHIPPED)}")
    ml = load(data)
    print(f"{data}: {len(ml)} ratings ({ml.layout}); protocol ml100k-lastsecond; {seeds} seed(s)")
    proto = Protocol.movielens(ml)
    baselines, skipped = run_baselines(proto, memory_mb)
    for name, why in skipped.items():
        print(f"{name} skipped: {why}", flush=True)
    models: dict[str, dict[str, Any]] = {
        name: {k: round(v, 4) for k, v in m.items()} for name, m in baselines.items()
    }
    for name in names or list(SHIPPED):
        s = _override(SHIPPED[name], depth, loss, epochs)
        res = over_seeds(proto, s.model, s.train, seeds)
        models[name] = {k: round(v, 4) for k, v in res.items()}
        print(
            f"{name}: {res['examples_per_s']:,.0f} training examples/s on this CPU "
            f"({s.train.loss} softmax), epochs chosen on validation (median): {res['epochs']:.0f}",
            flush=True,
        )
    _print_table(models)
    rss = peak_rss_mb()
    print(f"peak resident memory {rss:,.0f} MB (budget {memory_mb:,.0f} MB)")
    if as_json:
        print(
            json.dumps(
                {
                    "models": models,
                    "paper_faithful": PAPER_FAITHFUL.name,
                    "project_best": PROJECT_BEST.name,
                    "skipped": skipped,
                    "peak_rss_mb": rss,
                    "memory_budget_mb": memory_mb,
                }
            )
        )
    return 0


def run_selection(data: Path, as_json: bool, seeds: int = 3) -> int:
    """Validation-only metrics (mean over seeds) of the grid behind the shipped configs."""
    proto = Protocol.movielens(load(data))
    results: dict[str, dict[str, Any]] = {}
    for name, s in SELECTION_GRID.items():
        runs = [validation_metrics(proto, s.model, replace(s.train, seed=k)) for k in range(seeds)]
        m = {k: sum(r[k] for r in runs) / len(runs) for k in METRIC_NAMES}
        results[name] = {k: round(v, 4) for k, v in m.items()}
        print(f"{name:24s}" + "".join(f"{k} {m[k]:.4f}  " for k in METRIC_NAMES), flush=True)
    if as_json:
        print(json.dumps({"validation": results}))
    return 0
