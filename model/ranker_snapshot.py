"""Export and load the ranker as a snapshot (same manifest format as the candidate snapshot).

Holds the network weights (safetensors), the encoder (item and categorical vocabularies,
continuous-feature quantiles), the watch-time scale, the training config and the evaluation
metrics; the loader verifies the sha256 manifest before touching any weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from model.ranker import RankerConfig, RankingModel
from model.ranking_encoding import Encoder
from model.ranking_features import ItemMeta
from model.snapshot import Snapshot, load_snapshot, write_snapshot
from model.train_ranker import RankerTrainConfig, TrainedRanker
from model.watch_calibration import WatchCalibration

KIND = "ranker"


def export_ranker(
    trained: TrainedRanker,
    root: Path,
    metrics: dict[str, Any],
    version: str | None = None,
    items: Mapping[int, ItemMeta] | None = None,
) -> Path:
    """Write the trained ranker as a new immutable snapshot under ``root``.

    ``items`` (the catalogue metadata known at training time) travels with the snapshot so a
    worker can compute item features for every candidate without a global item table.
    """
    state = {f"model.{k}": v.detach().clone() for k, v in trained.model.state_dict().items()}
    cfg = asdict(trained.config)
    cfg["hidden"] = list(trained.config.hidden)
    meta = {
        "config": trained.model.config.to_dict(),
        "train_config": cfg,
        "encoder": trained.encoder.to_json(),
        "scale": trained.scale,
        "metrics": metrics,
        "items": {str(i): asdict(m) for i, m in (items or {}).items()},
    }
    if trained.calibration is not None:
        meta["calibration"] = trained.calibration.to_json()
    return write_snapshot(root, KIND, state, meta, version)


def snapshot_items(snap: Snapshot) -> dict[int, ItemMeta]:
    """The catalogue metadata stored with a ranker snapshot."""
    return {int(i): ItemMeta(**m) for i, m in snap.meta.get("items", {}).items()}


def load_ranker(path: Path) -> tuple[TrainedRanker, Snapshot]:
    """Verify and rebuild the ranker (weights from safetensors, no pickle)."""
    snap = load_snapshot(path, kind=KIND)
    c = dict(snap.meta["config"])
    c["hidden"] = tuple(c["hidden"])
    model = RankingModel(RankerConfig(**c))
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in snap.tensors.items() if k.startswith("model.")}
    )
    model.eval()
    t = dict(snap.meta["train_config"])
    t["hidden"] = tuple(t["hidden"])
    trained = TrainedRanker(
        model,
        Encoder.from_json(snap.meta["encoder"]),
        float(snap.meta["scale"]),
        RankerTrainConfig(**t),
        calibration=WatchCalibration.from_json(snap.meta.get("calibration")),
    )
    return trained, snap
