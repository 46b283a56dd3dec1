"""Run by the DDP test under torchrun: train both stages on one synthetic world, write metrics.

``python -m torch.distributed.run --nproc-per-node N tests/ddp_quality.py OUT.json`` — with
N = 1 it is the single-process reference. Rank 0 evaluates and writes OUT.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import distributed
from model.datasets.synthetic import synthetic_timelines
from model.evaluate_candidates import Protocol, evaluate_model
from model.evaluate_ranking import split_scores, weighted_pair_loss
from model.ranking_data import synthetic_pages
from model.shipped import PROJECT_BEST
from model.synth import SynthConfig, World
from model.train_candidate import fit
from model.train_ranker import RankerTrainConfig, fit_ranker

WORLD = SynthConfig(seed=4, n_users=800, n_items=800, n_topics=16, sessions_per_user=10)


def main(out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    distributed.init_from_env()
    _, world = distributed.rank_and_world()
    timelines, context = synthetic_timelines(WORLD)
    proto = Protocol.from_timelines(timelines, context)
    cfg = replace(PROJECT_BEST.train, epochs=8, seed=0, batch_size=256, progress=False)
    started = time.perf_counter()
    trained = fit(proto.test.timelines, context, PROJECT_BEST.model, cfg)
    cand_s = time.perf_counter() - started
    pages = synthetic_pages(World(WORLD), progress=False)
    train, val = pages.split_by_time(0.2)
    started = time.perf_counter()
    ranker = fit_ranker(train, RankerTrainConfig(seed=0, epochs=4, batch_size=512))
    rank_s = time.perf_counter() - started
    if distributed.is_leader():
        metrics = evaluate_model(trained, proto.test, cfg)
        flat = ranker.logits([p.features for p in val.pages])
        result = {
            "world_size": world,
            "candidates": {k: round(float(v), 4) for k, v in metrics.items()},
            "ranker_weighted_pair_loss": round(
                float(weighted_pair_loss(val.pages, split_scores(val.pages, flat))), 4
            ),
            "candidate_train_s": round(cand_s, 1),
            "ranker_train_s": round(rank_s, 1),
        }
        out.write_text(json.dumps(result))
    distributed.finish()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
