"""``watchnext train``: fit both stages on MovieLens and publish them as snapshots.

The candidate generator (the project's best shipped config) is trained on every rating; the
ranker on the MovieLens proxy pages built with that generator, early-stopped on the newest 10%
of pages. Both are written as immutable, checksummed snapshot directories under ``--out``.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from model import distributed
from model.blend_pages import blend_pages
from model.candidate_snapshot import export_candidates
from model.datasets.movielens import load
from model.evaluate_candidates import user_context
from model.evaluate_ranking import ranking_metrics, split_scores
from model.item_to_item import ItemToItem, fit_item_to_item
from model.protocol import timelines
from model.ranker_snapshot import export_ranker
from model.ranking_data import movielens_user_events
from model.shipped import PROJECT_BEST
from model.snapshot_store import pair_version
from model.synth import SynthConfig
from model.train_candidate import TrainConfig, Trained, fit
from model.train_ranker import RankerTrainConfig, fit_ranker
from serving.recommend import index_extras


def _export_candidates(cands: Trained, out: Path, cfg: TrainConfig, i2i: ItemToItem) -> Path:
    """The shipped generator with its ANN index and item-to-item source, as one snapshot."""
    return export_candidates(
        cands,
        out,
        cfg,
        {"config": PROJECT_BEST.name},
        extras=index_extras(cands),
        item_to_item=i2i,
    )


def run_train(data: Path, out: Path, epochs: int = 12, seed: int = 0) -> tuple[Path, Path] | None:
    """Train and export; returns (candidate snapshot dir, ranker snapshot dir).

    Under ``torchrun`` (WORLD_SIZE > 1) every rank trains its share of each batch (DDP over
    gloo, :mod:`model.distributed`) and only rank 0 writes snapshots; the other ranks return None.
    """
    distributed.init_from_env()
    leader = distributed.is_leader()
    ml = load(data)
    cfg = replace(PROJECT_BEST.train, epochs=epochs, seed=seed, progress=leader)
    tl = timelines(ml)
    cands = fit(tl, user_context(ml), PROJECT_BEST.model, cfg)
    i2i = fit_item_to_item(tl)
    cand_dir = None
    if leader:
        cand_dir = _export_candidates(cands, out, cfg, i2i)
        print(f"candidate snapshot: {cand_dir}", flush=True)
    events, items = movielens_user_events(data)
    pages = blend_pages(events, items, cands, cfg, i2i, seed=seed, progress=leader)
    train, val = pages.split_by_time(0.1)
    # In the MovieLens proxy a rarely rated item shows up almost only as a positive (negatives
    # come from the candidate generator's top 100), so its id embedding learns "always watched";
    # items seen fewer than 20 times share the zero embedding instead.
    ranker = fit_ranker(
        train, RankerTrainConfig(seed=seed, progress=leader, min_item_count=20), val
    )
    distributed.finish()  # every rank's collectives are done; only the leader has more to do
    if cand_dir is None:
        return None
    flat = ranker.logits([p.features for p in val.pages])
    metrics = {
        k: round(v, 4) for k, v in ranking_metrics(val.pages, split_scores(val.pages, flat)).items()
    }
    rank_dir = export_ranker(
        ranker, out, {"validation": metrics}, items=items, version=pair_version(cand_dir)
    )
    print(f"ranker snapshot: {rank_dir} (validation {metrics})", flush=True)
    return cand_dir, rank_dir


def run_train_synthetic(
    config: SynthConfig, out: Path, epochs: int = 8, seed: int = 0, progress: bool = True
) -> tuple[Path, Path]:
    """Train both stages on a synthetic world (searches, devices, impressions, watch time).

    Used where MovieLens lacks what is being exercised: real impressions with fatigue for the
    demotion test, and the serving benchmark's catalogue.
    """
    from model.datasets.synthetic import synthetic_timelines
    from model.ranking_data import item_meta, synthetic_pages
    from model.synth import World
    from stream.events import UploadEvent

    timelines, context = synthetic_timelines(config)
    cfg = replace(PROJECT_BEST.train, epochs=epochs, seed=seed, progress=progress)
    cands = fit(timelines, context, PROJECT_BEST.model, cfg)
    i2i = fit_item_to_item(timelines)
    cand_dir = _export_candidates(cands, out, cfg, i2i)
    world = World(config)
    pages = synthetic_pages(world, progress=progress)
    train, val = pages.split_by_time(0.1)
    ranker = fit_ranker(train, RankerTrainConfig(seed=seed, progress=progress), val)
    items = {e.item_id: item_meta(e) for _, e in world.uploads() if isinstance(e, UploadEvent)}
    rank_dir = export_ranker(
        ranker, out, {"synthetic": asdict(config)}, items=items, version=pair_version(cand_dir)
    )
    return cand_dir, rank_dir
