"""The candidate-generator configurations watchnext ships, and how each was chosen.

Both were chosen on the ``ml100k-lastsecond`` **validation** split (the last second of the
history; test targets never used), by mean validation NDCG@10 over seeds 0–2, epochs
early-stopped on it (``watchnext eval candidates --select`` reruns that grid):

* ``watchnext-mean`` is the paper-faithful model (§3): mean-pooled watch history, all of the
  paper's features (demographics, geography, example age), tower depth 2 (paper widths × 0.25),
  full softmax at MovieLens scale. Validation NDCG@10 0.0939 vs 0.0912 for watches-only depth 1.
* ``watchnext-recency`` replaces the plain mean by a recency-weighted mean
  (:class:`model.history_attention.RecencyBagArch`: one learned weight per recency rank,
  initialised to the plain mean); watches only, depth 1. Validation NDCG@10 0.1108 vs 0.1100 at
  depth 2. The self-attention encoder (``history_encoder="attention"``) reached 0.1170 on seed 0
  but trains ~20× slower on this CPU, so it is offered, not shipped.
* ``watchnext-sequence`` (issue 15) is the sequence-aware source trained sequence-wise. On
  the validation split alone (seeds 0–2, mean 0.2934 / 0.1124 / 0.4578 / 0.6155) it is level
  with the recency model on NDCG@10 (0.1108) and ahead on recall (seed 0: R@100 0.6425 vs
  0.5990). Served as the blend's neural source with epochs chosen one second earlier (``eval
  system --validation --generator watchnext-sequence``, seed 0) it loses HR@10 and NDCG@10
  (0.3097 / 0.1156 vs 0.3128 / 0.1230; R@100 0.6728 vs 0.6577), and its user vector costs ~6×
  the recency bag's (2.5 vs 0.4 ms per user on this CPU), paid at every event's refresh. It
  is offered, not shipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model.train_candidate import TrainConfig


@dataclass(frozen=True)
class Shipped:
    """A named (model config, training config) pair."""

    name: str
    model: dict[str, Any]
    train: TrainConfig = field(default_factory=TrainConfig)


PAPER_FAITHFUL = Shipped(
    "watchnext-mean",
    {"depth": 2, "width_factor": 0.25, "embed_dim": 64, "out_dim": 64},
    TrainConfig(loss="full", epochs=40),
)
PROJECT_BEST = Shipped(
    "watchnext-recency",
    {
        "depth": 1,
        "width_factor": 0.25,
        "embed_dim": 64,
        "out_dim": 64,
        "history_encoder": "recency",
    },
    TrainConfig(loss="full", epochs=40, use_example_age=False, use_demographics=False),
)
# The sequence-aware source (model/sequence_arch.py): second-causal self-attention over the
# newest ≤ 50 items, trained one pass per user window (model/sequence_training.py), input and
# output item tables tied, dropout 0.2; the side inputs as the project best's.
SEQUENCE = Shipped(
    "watchnext-sequence",
    {
        "depth": 1,
        "width_factor": 0.25,
        "embed_dim": 64,
        "out_dim": 64,
        "history_encoder": "sequence",
        "attention_layers": 2,
        "attention_heads": 2,
        "dropout": 0.2,
        "tie_item_embeddings": True,
    },
    PROJECT_BEST.train,
)
SHIPPED = {s.name: s for s in (PAPER_FAITHFUL, PROJECT_BEST, SEQUENCE)}

# The validation grid behind the two choices (name -> config), rerun by ``--select``.
SELECTION_GRID: dict[str, Shipped] = {
    "mean-depth2-all": PAPER_FAITHFUL,
    "mean-depth1-watches": Shipped(
        "mean-depth1-watches",
        {**PAPER_FAITHFUL.model, "depth": 1},
        TrainConfig(loss="full", epochs=40, use_example_age=False, use_demographics=False),
    ),
    "recency-depth1-watches": PROJECT_BEST,
    "recency-depth2-watches": Shipped(
        "recency-depth2-watches", {**PROJECT_BEST.model, "depth": 2}, PROJECT_BEST.train
    ),
    "sequence-depth1-watches": SEQUENCE,
    "sequence-depth1-all": Shipped(
        "sequence-depth1-all",
        SEQUENCE.model,
        TrainConfig(loss="full", epochs=40),  # the paper's side inputs: demographics, example age
    ),
}
