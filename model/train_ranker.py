"""Training the ranker with watch-time-weighted logistic regression (paper §4.2).

Positive (watched) impressions are weighted by their watch time, negatives by 1, and the model
is a logistic regression (through its over-arch) on watched-or-not. The learned odds are then
ΣT / #negatives ≈ E[T](1 + P) ≈ E[T] for a small click rate P, so at serving
``e^logit × scale`` is the expected watch time. ``scale`` is the constant positive weights are
divided by (the mean positive watch time) to keep the loss well conditioned; it multiplies back
at serving and is stored in the snapshot.

The ``unweighted`` ablation weights every impression 1 (odds = click odds: a CTR model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import distributed
from model.evaluate_ranking import split_scores, weighted_pair_loss
from model.ranker import RankerConfig, RankingModel
from model.ranking_data import PageSet
from model.ranking_encoding import Batch, Encoder
from model.ranking_features import RawFeatures
from model.watch_calibration import WatchCalibration, flat_watch


@dataclass(frozen=True)
class RankerTrainConfig:
    """Optimisation and ablation switches."""

    hidden: tuple[int, ...] = (256,)
    epochs: int = 12
    batch_size: int = 1024
    lr: float = 2e-3
    weighted: bool = True
    powers: bool = True
    seed: int = 0
    max_items: int | None = 200_000
    min_item_count: int = 1  # items seen fewer times share the zero (OOV) embedding
    progress: bool = False


@dataclass
class TrainedRanker:
    """A fitted ranker with its encoder and watch-time scale."""

    model: RankingModel
    encoder: Encoder
    scale: float
    config: RankerTrainConfig
    rows_per_s: float = 0.0
    best_epochs: int = 0  # epochs kept by early stopping (all of them without validation)
    # odds → expected watch seconds, fitted on validation pages (None: raw e^logit × scale)
    calibration: WatchCalibration | None = None

    def encode(self, raws: list[RawFeatures]) -> Batch:
        return self.encoder.encode(raws, powers=self.config.powers)

    @torch.no_grad()
    def logits(self, raws: list[RawFeatures], batch: int = 8192) -> np.ndarray:
        """[R] logits of every candidate of ``raws``, in order."""
        if self.model.training:  # flipping modes walks every sub-module: not per request
            self.model.eval()
        enc = self.encode(raws)
        if len(enc) <= batch:  # the serving case: one request, one forward pass, no copies
            return self.model(*_tensors(enc)).numpy() if len(enc) else np.zeros(0)
        out = [
            self.model(*_tensors(enc.select(torch.arange(lo, min(lo + batch, len(enc))))))
            for lo in range(0, len(enc), batch)
        ]
        return torch.cat(out).numpy() if out else np.zeros(0)

    def expected_watch_seconds(self, raws: list[RawFeatures]) -> np.ndarray:
        """e^logit × scale: the raw weighted-LR odds per candidate (≈ E[T](1 + P))."""
        return np.exp(self.logits(raws)) * self.scale

    def watch_seconds(self, logits: np.ndarray | float) -> np.ndarray:
        """Expected watch seconds of ``logits``: the odds through the validation calibration
        (:mod:`model.watch_calibration`) when the ranker has one."""
        odds = np.exp(np.asarray(logits, dtype=np.float64)) * self.scale
        return self.calibration(odds) if self.calibration is not None else odds

    def calibrate(self, pages: PageSet) -> None:
        """Fit the odds → watch-time calibration on ``pages`` (validation, never test)."""
        if not pages.pages:
            return
        odds = np.exp(self.logits([p.features for p in pages.pages])) * self.scale
        self.calibration = WatchCalibration.fit(odds, flat_watch(pages.pages))


def _tensors(b: Batch) -> tuple[torch.Tensor, ...]:
    return (b.items, b.history, b.cats, b.cont)


def weighted_logistic_loss(
    logits: torch.Tensor, clicked: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Σ w·BCE(logit, clicked) / Σ w — logits [R], clicked [R] {0,1}, weights [R] > 0."""
    bce = F.binary_cross_entropy_with_logits(logits, clicked, reduction="none")
    return (weights * bce).sum() / weights.sum()


def fit_ranker(
    train: PageSet, cfg: RankerTrainConfig, val: PageSet | None = None, patience: int = 2
) -> TrainedRanker:
    """Fit encoder (vocabularies, quantiles) and network on the training pages.

    With ``val`` (pages later in time than ``train``), training keeps the weights of the epoch
    with the lowest validation weighted per-user loss and stops after ``patience`` epochs
    without improvement: item-id embeddings otherwise memorise the training period.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    raws = [p.features for p in train.pages]
    encoder = Encoder.fit(raws, max_items=cfg.max_items, min_count=cfg.min_item_count)
    data = encoder.encode(raws, powers=cfg.powers)
    clicked = np.concatenate([p.clicked for p in train.pages]).astype(np.float32)
    secs = np.concatenate([p.watch_seconds for p in train.pages])
    scale = float(secs[clicked > 0].mean()) if clicked.any() else 1.0
    weights = np.where(clicked > 0, secs / scale, 1.0) if cfg.weighted else np.ones_like(secs)
    config = RankerConfig(
        n_items=len(encoder.items),
        cat_sizes=encoder.cat_sizes(),
        n_continuous=len(encoder.continuous) * (3 if cfg.powers else 1),
        hidden=cfg.hidden,
    )
    model = RankingModel(config)
    # start at the average odds so early steps do not fight a constant offset
    odds = (weights * clicked).sum() / max(((1 - clicked) * weights).sum(), 1.0)
    with torch.no_grad():
        model.over.mlp[-1].bias.fill_(float(np.log(max(odds, 1e-6))))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    y = torch.from_numpy(clicked)
    w = torch.from_numpy(weights.astype(np.float32))
    trained = TrainedRanker(model, encoder, scale if cfg.weighted else 1.0, cfg)
    busy, seen = 0.0, 0
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    since = 0
    net = distributed.wrap(model)  # DDP under torchrun (gloo), the model itself otherwise
    tables = distributed.table_parameters(model)  # sparse-gradient tables DDP leaves to us
    batch = distributed.per_rank_batch(cfg.batch_size)
    for epoch in tqdm(range(cfg.epochs), desc="train ranker", disable=not cfg.progress):
        model.train()
        order = distributed.shard(torch.from_numpy(rng.permutation(len(data))))
        started = time.perf_counter()
        for lo in range(0, len(order), batch):
            idx = order[lo : lo + batch]
            loss = weighted_logistic_loss(net(*_tensors(data.select(idx))), y[idx], w[idx])
            opt.zero_grad()
            loss.backward()
            distributed.average_gradients(tables)
            opt.step()
        busy += time.perf_counter() - started
        seen += len(order)
        trained.best_epochs = trained.best_epochs if val is not None else epoch + 1
        if val is not None:
            flat = trained.logits([p.features for p in val.pages])
            loss_val = weighted_pair_loss(val.pages, split_scores(val.pages, flat))
            if best is None or loss_val < best[0]:
                best = (loss_val, {k: v.detach().clone() for k, v in model.state_dict().items()})
                trained.best_epochs = epoch + 1
                since = 0
            else:
                since += 1
                if since >= patience:
                    break
    if best is not None:
        model.load_state_dict(best[1])
    trained.rows_per_s = seen / max(busy, 1e-9)
    model.eval()
    if val is not None and cfg.weighted:
        trained.calibrate(val)
    return trained
