"""Export and load the candidate generator as a snapshot (see :mod:`model.snapshot`).

The snapshot holds the user tower and embedding weights, the output item embeddings as a
float32 [N, H] matrix for the ANN index (row i = ``items[i]``), the vocabularies, the context
vocabularies, the training window and the evaluation metrics.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model.candidate import CandidateConfig, CandidateModel
from model.examples import UserContext
from model.features import Vocab
from model.item_to_item import ItemToItem
from model.snapshot import Snapshot, load_snapshot, write_snapshot
from model.train_candidate import TrainConfig, Trained

KIND = "candidates"


def export_candidates(
    trained: Trained,
    root: Path,
    train_cfg: TrainConfig,
    metrics: dict[str, Any],
    version: str | None = None,
    extras: dict[str, bytes] | None = None,
    item_to_item: ItemToItem | None = None,
) -> Path:
    """Write the trained candidate generator as a new immutable snapshot under ``root``.

    ``extras``: further checksummed files, e.g. the prebuilt ANN index (``serving.index``).
    ``item_to_item``: the co-watch source served beside the neural one; its tables travel in
    the same safetensors file, so a swap can never pair one generator with another's source.
    """
    state = {f"model.{k}": v for k, v in trained.model.state_dict().items()}
    state["item_embeddings"] = trained.model.item_vectors()[1:].detach().float()
    if item_to_item is not None:
        state.update(item_to_item.tensors())
    ctx = trained.context
    meta = {
        "config": trained.model.config.to_dict(),
        "train_config": asdict(train_cfg),
        "items": trained.items.to_json(),
        "tokens": trained.tokens.to_json(),
        "context": {n: v.to_json() for n, v in ctx.vocabs.items()},
        "window": {"end": trained.window_end, "span": trained.window_span},
        "metrics": metrics,
    }
    if item_to_item is not None:
        meta["i2i"] = item_to_item.method
    return write_snapshot(root, KIND, state, meta, version, extras)


def load_candidates(path: Path) -> tuple[Trained, Snapshot]:
    """Verify and rebuild the model (weights loaded from safetensors, no pickle)."""
    snap = load_snapshot(path, kind=KIND)
    config = CandidateConfig(**snap.meta["config"])
    with torch.device("meta"):  # no random init of tables about to be overwritten (1M rows: 1.3 s)
        model = CandidateModel(config)
    weights = {
        k.removeprefix("model."): v for k, v in snap.tensors.items() if k.startswith("model.")
    }
    model.load_state_dict(weights, assign=True)
    model.eval()
    c = snap.meta["context"]
    ctx = UserContext({n: Vocab(v) for n, v in c.items()}, {})
    trained = Trained(
        model,
        Vocab(snap.meta["items"]),
        Vocab(snap.meta["tokens"]),
        ctx,
        snap.meta["window"]["end"],
        snap.meta["window"]["span"],
        0.0,
    )
    if not torch.equal(snap.tensors["item_embeddings"], model.item_vectors()[1:].detach()):
        raise ValueError(f"{path}: item_embeddings disagree with the model's output table")
    return trained, snap
