"""The paper's Figure 6 analogue: candidate quality by tower depth 0–4 × feature set.

On MovieLens (no searches, no devices): watches only; + example age; + demographics and
geography; all. On the synthetic world (``--synthetic``) the search features exist too:
watches; + searches; + example age; + demographics/geo/device; all. Each cell is one seed of
the last-second protocol (epochs chosen on validation), so differences of ~0.01 are within seed
noise. Writes a table, a JSON file and a PNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.evaluate_candidates import Protocol, run_model
from model.train_candidate import TrainConfig

OFF = {"use_example_age": False, "use_demographics": False, "use_search": False}
MOVIELENS_SETS: dict[str, dict[str, bool]] = {
    "watches": OFF,
    "+example age": {**OFF, "use_example_age": True},
    "+demographics/geo": {**OFF, "use_demographics": True},
    "all": {"use_example_age": True, "use_demographics": True, "use_search": True},
}
SYNTHETIC_SETS: dict[str, dict[str, bool]] = {
    "watches": OFF,
    "+searches": {**OFF, "use_search": True},
    "+example age": {**OFF, "use_example_age": True},
    "+demographics/geo/device": {**OFF, "use_demographics": True},
    "all": {"use_example_age": True, "use_demographics": True, "use_search": True},
}
# The synthetic world used for the figure: small enough for 25 cells on a 2-core CPU.
SYNTHETIC_WORLD = {"n_users": 2000, "n_items": 3000, "sessions_per_user": 15.0, "seed": 0}


def _protocol(source: Path | str) -> tuple[Protocol, dict[str, dict[str, bool]], str]:
    if source == "synthetic":
        from model.datasets.synthetic import synthetic_timelines
        from model.synth import SynthConfig

        tl, ctx = synthetic_timelines(SynthConfig(**SYNTHETIC_WORLD))  # type: ignore[arg-type]
        label = f"synthetic world {SYNTHETIC_WORLD}"
        return Protocol.from_timelines(tl, ctx), SYNTHETIC_SETS, label
    from model.datasets.movielens import load

    return Protocol.movielens(load(Path(source))), MOVIELENS_SETS, "ml100k-lastsecond"


def run_figure6(
    source: Path | str, out_dir: Path, depths: list[int], epochs: int | None, as_json: bool
) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proto, sets, label = _protocol(source)
    stem = "figure6_synthetic" if source == "synthetic" else "figure6"
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name, flags in sets.items():
        results[name] = {}
        for depth in depths:
            cfg = TrainConfig(epochs=epochs or 40, loss="full", **flags)
            m = run_model(proto, {"depth": depth, "width_factor": 0.25}, cfg)
            results[name][depth] = {k: round(v, 4) for k, v in m.items()}
            print(
                f"{name:26s} depth {depth}: HR@10 {m['HR10']:.4f} NDCG@10 {m['NDCG10']:.4f} "
                f"R@100 {m['R100']:.4f}",
                flush=True,
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("HR10", "R100"), strict=True):
        for name, by_depth in results.items():
            ax.plot(depths, [by_depth[d][metric] for d in depths], marker="o", label=name)
        ax.set_xlabel("tower depth (0 = linear)")
        ax.set_ylabel(metric)
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"watchnext candidate generator (paper Fig. 6 analogue)\n{label}", fontsize=9)
    fig.tight_layout()
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=120)
    (out_dir / f"{stem}.json").write_text(json.dumps({"data": label, "cells": results}, indent=1))
    print(f"\n{'features':26s}" + "".join(f"{'d' + str(d):>9s}" for d in depths) + "   (HR@10)")
    for name, by_depth in results.items():
        print(f"{name:26s}" + "".join(f"{by_depth[d]['HR10']:9.4f}" for d in depths))
    print(f"plot: {png}")
    if as_json:
        print(json.dumps(results))
    return 0
