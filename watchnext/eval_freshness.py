"""``watchnext eval freshness``: the paper's Figure 4 on the synthetic world.

The world's uploads arrive throughout the window and their popularity spikes after upload and
decays (``SynthConfig.spike``, ``decay_days``). Two candidate generators are trained on the
whole window, identical but for the example-age input (paper §3.3). Both are then asked, as
serving does, for the next watch *at the end of the window* (example age 0): each user's full
softmax over the catalogue, averaged over users, is the predicted share of each item. Summed by
the item's age since upload at the window end, that is compared with the empirical share: the
watches of the last ``recent_days`` of the window, by the watched item's age at watch time.

A model that ignores example age learns each item's popularity averaged over the window, so it
under-predicts items that are fresh *now*; with example age it can represent "what is popular
at the end of the window". Reported: share of watches on items younger than 1 and 3 days, and
the total-variation distance between predicted and empirical shares over 1-day bins. PNG + JSON.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.candidate_inputs import user_vectors
from model.datasets.synthetic import synthetic_timelines
from model.shipped import PAPER_FAITHFUL
from model.synth import DAY, SynthConfig, World
from model.train_candidate import TrainConfig, Trained, fit

WORLD = SynthConfig(seed=3, n_users=3000, n_items=3000, sessions_per_user=15.0, days=30.0)
BINS = 14  # 1-day bins; the last one collects everything older


def predicted_share(trained: Trained, cfg: TrainConfig, timelines: dict, users: dict) -> dict:
    """item id -> mean over users of P(next watch = item) at the window end."""
    order = sorted(timelines)
    total = torch.zeros(len(trained.items) - 1)
    with torch.no_grad():
        for lo in range(0, len(order), 512):
            chunk = order[lo : lo + 512]
            u = user_vectors(
                trained, [timelines[x] for x in chunk], [users.get(x) for x in chunk], cfg
            )
            total += torch.softmax(u @ trained.model.item_vectors()[1:].T, dim=1).sum(0)
    share = (total / len(order)).numpy()
    return dict(zip(trained.items.ids, share.tolist(), strict=True))


def _by_age(ages_days: np.ndarray, weights: np.ndarray) -> np.ndarray:
    idx = np.clip(np.floor(ages_days).astype(int), 0, BINS - 1)
    out = np.bincount(idx[ages_days >= 0], weights[ages_days >= 0], minlength=BINS)
    return out / max(out.sum(), 1e-12)


def run_freshness(
    out: Path,
    epochs: int = 10,
    recent_days: float = 3.0,
    world_cfg: SynthConfig = WORLD,
    overlay: bool = True,
) -> dict[str, Any]:
    """Train both models, compare with the empirical shares, write JSON + PNG under ``out``."""
    world = World(world_cfg)
    timelines, context = synthetic_timelines(world_cfg)
    end = max(t.seconds[-1] for t in timelines.values())
    print(f"synthetic world: {len(timelines)} users with watches; window end {end:.0f}")

    # empirical: the last days' watches by the watched item's age at watch time
    ages, weights = [], []
    for t in timelines.values():
        for s, items in zip(t.seconds, t.items, strict=True):
            if s >= end - recent_days * DAY:
                for i in items:
                    ages.append((s - world.item_upload[i]) / DAY)
                    weights.append(1.0)
    empirical = _by_age(np.array(ages), np.array(weights))

    result: dict[str, Any] = {
        "world": {k: v for k, v in vars(world_cfg).items()},
        "recent_days": recent_days,
        "bins_days": list(range(BINS)),
        "empirical": empirical.round(4).tolist(),
    }
    base = replace(PAPER_FAITHFUL.train, epochs=epochs, use_demographics=False, progress=True)
    for name, use_age in (("without example age", False), ("with example age", True)):
        cfg = replace(base, use_example_age=use_age)
        trained = fit(timelines, context, PAPER_FAITHFUL.model, cfg)
        share = predicted_share(trained, cfg, timelines, context.users)
        ids = np.array(list(share))
        item_age = (end - world.item_upload[ids]) / DAY
        predicted = _by_age(item_age, np.array([share[i] for i in ids]))
        result[name] = {
            "share_by_age": predicted.round(4).tolist(),
            "share_under_1_day": round(float(predicted[0]), 4),
            "share_under_3_days": round(float(predicted[:3].sum()), 4),
            "total_variation_vs_empirical": round(
                0.5 * float(np.abs(predicted - empirical).sum()), 4
            ),
        }
    result["empirical_share_under_1_day"] = round(float(empirical[0]), 4)
    result["empirical_share_under_3_days"] = round(float(empirical[:3].sum()), 4)
    if overlay:
        from watchnext.eval_overlay import run_overlay_eval

        result["overlay"] = run_overlay_eval(world, timelines, context, epochs)
        for key in ("new_item_recall_with_overlay", "new_item_recall_without_overlay"):
            result[key] = result["overlay"][key]
    out.mkdir(parents=True, exist_ok=True)
    (out / "figure4_freshness.json").write_text(json.dumps(result, indent=1, default=str))
    _plot(result, out / "figure4_freshness.png")
    print(f"\n{'':24s} {'<1 day':>8s} {'<3 days':>8s} {'TV dist':>8s}")
    print(
        f"{'empirical':24s} {result['empirical_share_under_1_day']:8.4f} "
        f"{result['empirical_share_under_3_days']:8.4f} {'':>8s}"
    )
    for name in ("without example age", "with example age"):
        r = result[name]
        print(
            f"{name:24s} {r['share_under_1_day']:8.4f} {r['share_under_3_days']:8.4f} "
            f"{r['total_variation_vs_empirical']:8.4f}"
        )
    if "overlay" in result:
        ov = result["overlay"]
        print(
            f"\nnew uploads before the next retrain ({ov['users']} users, {ov['new_items']} "
            f"items uploaded since the retrain; fold-in chosen on validation "
            f"{ov['chosen_on_validation']})"
        )
        print(f"{'':36s} {'new-item R@50':>13s} {'all R@50':>9s} {'in overlay':>10s}")
        for name, row in ov["rows"].items():
            print(
                f"{name:36s} {row['new_item_recall']:13.4f} {row['recall_all']:9.4f} "
                f"{row['overlay_items']:10d}"
            )
    print(f"wrote {out / 'figure4_freshness.json'} and {out / 'figure4_freshness.png'}")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overlay = result.get("overlay")
    if overlay is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
    else:
        fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 3.8))
        _plot_overlay(overlay, bars)
    x = np.array(result["bins_days"][:-1]) + 0.5  # the last bin (older items) is in the legend
    older = f"{BINS - 1}+ days"
    ax.plot(
        x,
        result["empirical"][:-1],
        "k-",
        lw=2,
        label=f"empirical, last days' watches ({older}: {result['empirical'][-1]:.2f})",
    )
    for name, style in (("without example age", "r--"), ("with example age", "b-")):
        share = result[name]["share_by_age"]
        ax.plot(x, share[:-1], style, label=f"model {name} ({older}: {share[-1]:.2f})")
    ax.set_xlabel("days since upload")
    ax.set_ylabel("share of next watches")
    ax.set_title("Figure 4 analogue (synthetic world), served at the window end", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_overlay(overlay: dict[str, Any], ax: Any) -> None:
    """Recall@50 of new uploads (and of all next watches) with and without the overlay."""
    names = list(overlay["rows"])
    new = [overlay["rows"][n]["new_item_recall"] for n in names]
    every = [overlay["rows"][n]["recall_all"] for n in names]
    y = np.arange(len(names))
    ax.barh(y - 0.2, new, 0.4, color="tab:blue", label="items uploaded since the retrain")
    ax.barh(y + 0.2, every, 0.4, color="tab:gray", label="all next watches")
    for yy, v in zip(y, new, strict=True):
        ax.text(v + 0.005, yy - 0.2, f"{v:.3f}", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("recall@50 before the next retrain")
    ax.set_title(
        f"Freshness overlay ({overlay['users']} users, {overlay['new_items']} new uploads)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper right")
