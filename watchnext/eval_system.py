"""``watchnext eval system``: the served top-k end to end, beside the peers and each source.

Per seed, on the ``ml100k-lastsecond`` protocol (any MovieLens layout) or the synthetic world:

1. the neural generators (the shipped ``watchnext-recency`` and the paper-faithful
   ``watchnext-mean``) get their epochs chosen on the validation split, then train on the test
   split's history (test targets never seen);
2. the item-to-item source (:mod:`model.item_to_item`) is fitted on the same history;
3. the ranker trains on blend pages of that history (:mod:`model.blend_pages`), early-stopped
   and calibrated on the newest 10 % of them;
4. both are exported as checksummed snapshots and loaded back through
   :meth:`serving.recommend.ServingModels.load`, the worker's own loader;
5. every test user's replayed state is served a top 100 at the target second
   (:mod:`serving.system_eval`).

Printed beside: the in-house peers of ``eval candidates`` (MostPop, ItemKNN, EASE) and both
neural generators alone under the candidate protocol, and each source alone as served.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from model.blend_pages import RETRIEVE, RETRIEVE_I2I, blend_pages
from model.candidate_snapshot import export_candidates
from model.evaluate_candidates import (
    DEFAULT_MEMORY_MB,
    Protocol,
    evaluate_model,
    run_baselines,
    validation_metrics,
)
from model.item_to_item import DEFAULT_BUDGET_MB, fit_item_to_item
from model.metrics import METRIC_NAMES
from model.ranker_snapshot import export_ranker
from model.ranking_features import ItemMeta
from model.shipped import PAPER_FAITHFUL, PROJECT_BEST, SHIPPED, Shipped
from model.train_candidate import fit
from model.train_ranker import RankerTrainConfig, fit_ranker
from serving.recommend import Recommender, ServingModels, index_extras, latest_snapshots
from serving.system_eval import served_metrics
from watchnext.eval_candidates import peak_rss_mb

SERVED = "watchnext-served"
# users whose blend pages train the ranker (a seeded sample beyond; every user's state is
# still replayed and served): all of them on ml-100k (943) and the synthetic world (2,000);
# on a 31k-user data set all users' pages took 7 minutes and 1.7M rows on this machine
PAGE_USERS = 5000


def page_sample(users: list[int], limit: int, seed: int) -> set[int] | None:
    """The users whose blend pages are built: all (None) up to ``limit``, else a seeded sample."""
    if limit <= 0 or len(users) <= limit:
        return None
    rng = np.random.default_rng(seed)
    return {int(u) for u in rng.choice(np.array(sorted(users)), size=limit, replace=False)}


class Source:
    """A data set under the protocol: its split, its events per user and its catalogue."""

    def __init__(
        self,
        label: str,
        proto: Protocol,
        user_events: dict[int, list[Any]],
        items: dict[int, ItemMeta],
        ranker_min_item_count: int,
    ) -> None:
        self.label = label
        self.proto = proto
        self.user_events = user_events
        self.items = items
        self.ranker_min_item_count = ranker_min_item_count

    @classmethod
    def movielens(cls, path: Path) -> Source:
        from model.datasets.movielens import load
        from model.ranking_data import movielens_user_events

        ml = load(path)
        events, items = movielens_user_events(path)
        # rarely rated items show up almost only as positives on the proxy pages: ids seen
        # fewer than 20 times share the zero embedding (the choice `watchnext train` ships)
        label = f"{path} ({ml.layout}), protocol ml100k-lastsecond"
        return cls(label, Protocol.movielens(ml), events, items, 20)

    @classmethod
    def synthetic(cls) -> Source:
        from model.datasets.synthetic import synthetic_timelines
        from model.ranking_data import item_meta
        from model.synth import SynthConfig, World
        from stream.events import ProfileEvent, SearchEvent, UploadEvent, WatchEvent
        from watchnext.figure6 import SYNTHETIC_WORLD

        config = SynthConfig(**SYNTHETIC_WORLD)  # type: ignore[arg-type]
        world = World(config)
        tl, ctx = synthetic_timelines(config)
        kinds = ProfileEvent | SearchEvent | WatchEvent
        events = {
            u: [e for _, e in world.user_events(u) if isinstance(e, kinds)]
            for u in range(config.n_users)
        }
        items = {e.item_id: item_meta(e) for _, e in world.uploads() if isinstance(e, UploadEvent)}
        label = f"synthetic world {SYNTHETIC_WORLD}, last-second protocol"
        return cls(label, Protocol.from_timelines(tl, ctx), events, items, 1)

    def validation(self) -> Source:
        """The same data one second earlier: the test split's history, split once more (the
        protocol's validation split), so settings are chosen without the test targets."""
        proto = Protocol.from_timelines(self.proto.val.timelines, self.proto.context)
        label = f"{self.label}, VALIDATION split"
        return Source(label, proto, self.user_events, self.items, self.ranker_min_item_count)

    def history_events(self) -> dict[int, list[Any]]:
        """Every user's events strictly before their test second (all of them for users
        without one): what the snapshots may be trained on and the state may hold."""
        cut = self.proto.test.target_ts
        return {
            u: [e for e in evs if e.ts < cut.get(u, float("inf"))]
            for u, evs in self.user_events.items()
        }


def _generator(src: Source, s: Shipped, seed: int, epochs: int | None) -> tuple[Any, Any, float]:
    """(trained on the test history, its train config, epochs) with epochs chosen on validation."""
    cfg = replace(s.train, seed=seed, progress=False)
    if epochs is None:
        epochs = max(1, int(validation_metrics(src.proto, s.model, cfg)["epochs"]))
    cfg = replace(cfg, epochs=epochs)
    return fit(src.proto.test.timelines, src.proto.context, s.model, cfg), cfg, float(epochs)


def run_seed(
    src: Source,
    seed: int,
    epochs: int | None,
    ranker_epochs: int,
    work: Path,
    negatives: int = 10,
    ranker_min_count: int | None = None,
    retrieve: tuple[int, int] = (RETRIEVE, RETRIEVE_I2I),
    generator: Shipped = PROJECT_BEST,
    page_users: int = PAGE_USERS,
    paper_faithful: Shipped = PAPER_FAITHFUL,
) -> dict[str, dict[str, float]]:
    """One seed: train on the history, ship, load, serve; metrics by row name.

    ``generator``: the neural source served (its ANN candidates, the blend pages' and the
    ranker's), the shipped project-best configuration unless another is being compared."""
    rows: dict[str, dict[str, float]] = {}
    print(f"seed {seed}: paper-faithful generator ...", flush=True)
    pf, pf_cfg, pf_epochs = _generator(src, paper_faithful, seed, epochs)
    rows[paper_faithful.name] = {**evaluate_model(pf, src.proto.test, pf_cfg), "epochs": pf_epochs}
    print(f"seed {seed}: served generator {generator.name} ...", flush=True)
    gen, cfg, gen_epochs = _generator(src, generator, seed, epochs)
    rows[generator.name] = {**evaluate_model(gen, src.proto.test, cfg), "epochs": gen_epochs}
    i2i = fit_item_to_item(src.proto.test.timelines, DEFAULT_BUDGET_MB)
    print(
        f"seed {seed}: item-to-item source ({i2i.method}, {len(i2i.items)} items) ...", flush=True
    )
    states: dict[int, Any] = {}
    tty = sys.stderr.isatty()  # a bar on a terminal, one line per step in a log
    history = src.history_events()
    sample = page_sample(list(history), page_users, seed)
    if sample is not None:
        print(f"seed {seed}: blend pages of {len(sample):,} of {len(history):,} users", flush=True)
    pages = blend_pages(
        history, src.items, gen, cfg, i2i, negatives, *retrieve, seed=seed,
        states=states, progress=tty, page_users=sample,
    )  # fmt: skip
    train, val = pages.split_by_time(0.1)
    print(f"seed {seed}: ranker on {train.rows():,} blend rows ({val.rows():,} validation) ...")
    min_count = src.ranker_min_item_count if ranker_min_count is None else ranker_min_count
    rcfg = RankerTrainConfig(epochs=ranker_epochs, seed=seed, min_item_count=min_count)
    ranker = fit_ranker(train, rcfg, val)
    root = work / f"seed{seed}"
    export_candidates(
        gen, root, cfg, {"eval": "system"}, extras=index_extras(gen), item_to_item=i2i
    )
    export_ranker(ranker, root, {"eval": "system"}, items=src.items)
    found = latest_snapshots(root)
    assert found is not None
    rec = Recommender(ServingModels.load(*found), *retrieve)
    test = src.proto.test
    history = {u: [i for s in t.items for i in s] for u, t in test.timelines.items()}
    served = served_metrics(rec, states, test.targets, test.target_ts, history)
    rows[SERVED] = served.pop("served")
    for name, m in served.items():
        rows[name] = m
    return rows


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in METRIC_NAMES:
        vals = [r[k] for r in runs]
        out[k] = round(statistics.median(vals), 4)
        out[f"{k}_mean"] = round(statistics.mean(vals), 4)
        out[f"{k}_std"] = round(statistics.pstdev(vals), 4)
    for k in ("epochs", "repeat_share", "users"):
        if k in runs[0]:
            out[k] = round(statistics.median(r[k] for r in runs), 4)
    return out


def run_eval_system(
    data: Path | None,
    synthetic: bool,
    seeds: int,
    as_json: bool,
    epochs: int | None = None,
    ranker_epochs: int = 12,
    memory_mb: float = DEFAULT_MEMORY_MB,
    out_dir: Path | None = None,
    validation: bool = False,
    negatives: int = 10,
    ranker_min_count: int | None = None,
    retrieve: tuple[int, int] = (RETRIEVE, RETRIEVE_I2I),
    generator: str = PROJECT_BEST.name,
    page_users: int = PAGE_USERS,
    loss: str | None = None,
) -> int:
    """Evaluate, print the table (medians over seeds) and a final JSON line with ``as_json``.

    ``validation``: on the validation split instead (where settings are chosen); no files
    are written then. ``negatives`` / ``ranker_min_count``: the ranker's page negatives and
    its item-id vocabulary threshold (default: the data set's shipped choice).
    """
    if generator not in SHIPPED:
        raise SystemExit(f"unknown --generator {generator}; choose from {','.join(SHIPPED)}")
    served_gen, faithful = SHIPPED[generator], PAPER_FAITHFUL
    if loss is not None:  # both neural generators (the full softmax is slow on big catalogues)
        served_gen = replace(served_gen, train=replace(served_gen.train, loss=loss))
        faithful = replace(faithful, train=replace(faithful.train, loss=loss))
    src = Source.synthetic() if synthetic or data is None else Source.movielens(data)
    if validation:
        src, out_dir = src.validation(), None
    print(f"{src.label}; {seeds} seed(s)", flush=True)
    baselines, skipped = run_baselines(src.proto, memory_mb)
    for name, why in skipped.items():
        print(f"{name} skipped: {why}", flush=True)
    per_seed: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="watchnext-eval-system-") as tmp:
        for seed in range(seeds):
            got = run_seed(
                src, seed, epochs, ranker_epochs, Path(tmp), negatives, ranker_min_count,
                retrieve, served_gen, page_users, faithful,
            )  # fmt: skip
            for name, m in got.items():
                per_seed.setdefault(name, []).append(m)
    models: dict[str, dict[str, float]] = {
        name: {k: round(v, 4) for k, v in m.items()} for name, m in baselines.items()
    }
    models.update({name: _summary(runs) for name, runs in per_seed.items()})
    print(f"\n{'model (median of seeds)':28s}" + "".join(f"{k:>10s}" for k in METRIC_NAMES))
    for name, m in models.items():
        print(f"{name:28s}" + "".join(f"{m[k]:10.4f}" for k in METRIC_NAMES))
    share = models[SERVED].get("repeat_share", 0.0)
    print(f"served top-10 slots holding an item watched before the rolling history: {share:.2%}")
    rss = peak_rss_mb()
    print(f"peak resident memory {rss:,.0f} MB (budget {memory_mb:,.0f} MB)")
    doc = {
        "models": models,
        "served": SERVED,
        "paper_faithful": PAPER_FAITHFUL.name,
        "project_best": PROJECT_BEST.name,
        "generator": generator,
        "skipped": skipped,
        "seeds": seeds,
        "data": src.label,
        "split": "validation" if validation else "test",
        "negatives": negatives,
        "retrieve": list(retrieve),
        "page_users": page_users,
        "loss": loss,
        "ranker_min_item_count": (
            src.ranker_min_item_count if ranker_min_count is None else ranker_min_count
        ),
        "peak_rss_mb": rss,
        "memory_budget_mb": memory_mb,
    }
    if out_dir is not None:
        stem = "system_synthetic" if synthetic or data is None else "system_ml100k"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1))
        _png(models, src.label, out_dir / f"{stem}.png")
        print(f"results: {out_dir / (stem + '.json')}, {out_dir / (stem + '.png')}")
    if as_json:
        print(json.dumps(doc))
    return 0


def _png(models: dict[str, dict[str, float]], label: str, png: Path) -> None:
    """Figure-6-style bars: every row's four metrics, the served top-k last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(models)
    names.sort(key=lambda n: (n == SERVED, models[n]["R100"]))
    fig, axes = plt.subplots(1, len(METRIC_NAMES), figsize=(14, 0.45 * len(names) + 1.5))
    for ax, k in zip(axes, METRIC_NAMES, strict=True):
        vals = [models[n][k] for n in names]
        colors = ["tab:red" if n == SERVED else "tab:blue" for n in names]
        ax.barh(np.arange(len(names)), vals, color=colors)
        ax.set_yticks(np.arange(len(names)), names if k == METRIC_NAMES[0] else [""] * len(names))
        ax.set_title(k)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=7)
    fig.suptitle(f"eval system: sources, peers and the served blend — {label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
