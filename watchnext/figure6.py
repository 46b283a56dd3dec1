"""The paper's Figure 6 analogue: candidate quality by tower depth 0–4 × feature set.

Feature sets on MovieLens (no searches there): watches only; + example age; + demographics and
geography; all. Each cell is one seed of the ``ml100k-lastsecond`` protocol (epochs chosen on
validation), so differences of ~0.01 are within seed noise. Writes a table and a PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.datasets.movielens import load
from model.evaluate_candidates import run_model
from model.train_candidate import TrainConfig

FEATURE_SETS = {
    "watches": {"use_example_age": False, "use_demographics": False},
    "+example age": {"use_example_age": True, "use_demographics": False},
    "+demographics/geo": {"use_example_age": False, "use_demographics": True},
    "all": {"use_example_age": True, "use_demographics": True},
}


def run_figure6(data: Path, out_dir: Path, depths: list[int], epochs: int, as_json: bool) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ml = load(data)
    results: dict[str, dict[int, dict[str, float]]] = {}
    for name, flags in FEATURE_SETS.items():
        results[name] = {}
        for depth in depths:
            cfg = TrainConfig(epochs=epochs, loss="full", **flags)
            m = run_model(ml, {"depth": depth, "width_factor": 0.25}, cfg)
            results[name][depth] = {k: round(v, 4) for k, v in m.items()}
            print(
                f"{name:18s} depth {depth}: HR@10 {m['HR10']:.4f} NDCG@10 {m['NDCG10']:.4f} "
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
    axes[0].legend()
    fig.suptitle("watchnext candidate generator, ml100k-lastsecond (paper Fig. 6 analogue)")
    fig.tight_layout()
    png = out_dir / "figure6.png"
    fig.savefig(png, dpi=120)
    (out_dir / "figure6.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'features':18s}" + "".join(f"{'d' + str(d):>9s}" for d in depths) + "   (HR@10)")
    for name, by_depth in results.items():
        print(f"{name:18s}" + "".join(f"{by_depth[d]['HR10']:9.4f}" for d in depths))
    print(f"plot: {png}")
    if as_json:
        print(json.dumps(results))
    return 0
