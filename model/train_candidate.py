"""Training and scoring of the candidate generator on per-user timelines.

``fit`` trains on the visible timelines of a split (rollback examples, a fixed number per user
per epoch, sampled softmax with logQ correction or the full softmax); ``score_users`` computes
serving-time user vectors (example age 0, the newest ≤ 50 items) and scores the catalogue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from model import distributed
from model.candidate import CandidateConfig, CandidateModel
from model.candidate_inputs import user_vectors
from model.examples import UserContext, build_examples, continuous, sample_per_user
from model.features import Vocab
from model.protocol import UserTimeline
from model.sampled_softmax import NegativeSampler, full_softmax_loss, sampled_softmax_loss


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and feature-set choices (the model's shape lives in CandidateConfig)."""

    epochs: int = 30
    batch_size: int = 512
    lr: float = 3e-3
    per_user: int = 64
    loss: str = "sampled"  # "sampled" | "full"
    negatives: int = 512
    alpha: float = 0.75
    logq: bool = True
    seed: int = 0
    use_example_age: bool = True
    use_demographics: bool = True
    use_search: bool = True
    max_tokens: int = 50_000  # search-token vocabulary (unigrams + bigrams), top-N by frequency
    progress: bool = False


@dataclass
class Trained:
    """A fitted model with what is needed to score users."""

    model: CandidateModel
    items: Vocab
    tokens: Vocab
    context: UserContext
    window_end: float
    window_span: float
    examples_per_s: float


def _features(
    users: np.ndarray, ctx: UserContext, example_age: np.ndarray, use_demo: bool, use_age: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context tensors for a batch: cats [B, C] int64, continuous [B, 6] float32."""
    table_cats, table_age = ctx.arrays()
    known = users < len(table_age)
    safe = np.where(known, users, 0)
    cats = np.where(known[:, None], table_cats[safe], 0)
    ages = np.where(known, table_age[safe], 0.0)
    if not use_demo:
        cats = np.zeros_like(cats)
        ages = np.zeros_like(ages)
    if not use_age:
        example_age = np.zeros_like(example_age)
    return torch.from_numpy(cats), torch.from_numpy(continuous(ages, example_age))


class CandidateLoss(torch.nn.Module):
    """The training loss as a module, so DDP (which hooks ``forward``) can wrap it."""

    def __init__(self, model: CandidateModel, loss: str, log_q: torch.Tensor | None) -> None:
        super().__init__()
        self.model, self.loss, self.log_q = model, loss, log_q

    def forward(
        self,
        hist: torch.Tensor,
        search: torch.Tensor,
        cats: torch.Tensor,
        cont: torch.Tensor,
        labels: torch.Tensor,
        rank: torch.Tensor | None,
        negatives: torch.Tensor | None,
    ) -> torch.Tensor:
        """Batch tensors as in :meth:`TrainStep.__call__`, negatives [K] -> scalar loss."""
        model = self.model
        u = model.user_vector(hist, search, cats, cont, rank)
        if self.loss == "full" or negatives is None:
            return full_softmax_loss(u, labels, model.item_vectors())
        return sampled_softmax_loss(u, labels, model.output_vectors, negatives, self.log_q)


class TrainStep:
    """One optimisation step of the candidate model (shared by ``fit`` and ``bench train``).

    Embedding tables get sparse gradients (SparseAdam), so a step touches only the rows in the
    batch and its sampled negatives: a 1M-item table trains on a CPU. With the full softmax the
    output table's gradient is dense and it moves to the dense optimizer.
    """

    def __init__(
        self,
        model: CandidateModel,
        cfg: TrainConfig,
        sampler: NegativeSampler,
        loss: type[torch.nn.Module] | None = None,
    ) -> None:
        """``loss``: the loss module class (``CandidateLoss`` for rollback examples, the
        sequence trainer's for whole windows), built as ``loss(model, cfg.loss, log_q)``."""
        self.model, self.cfg, self.sampler = model, cfg, sampler
        out = model.item_out.weight
        sparse: list[torch.Tensor] = [
            p
            for p in (model.history.embedding.weight, model.search.embedding.weight)
            if p is not out
        ]
        tables = {id(model.history.embedding.weight), id(model.search.embedding.weight), id(out)}
        dense: list[torch.Tensor] = [p for p in model.parameters() if id(p) not in tables]
        # named_parameters() lists a tied table once; it goes where its gradient's kind says.
        (dense if cfg.loss == "full" else sparse).append(out)
        self.opt_sparse = torch.optim.SparseAdam(sparse, lr=cfg.lr)
        self.opt_dense = torch.optim.Adam(dense, lr=cfg.lr)
        log_q = sampler.log_q if cfg.logq else None
        loss_module = (loss or CandidateLoss)(model, cfg.loss, log_q)
        self.tables = distributed.table_parameters(loss_module)
        self.net = distributed.wrap(loss_module)

    def __call__(
        self,
        hist: torch.Tensor,
        cats: torch.Tensor,
        cont: torch.Tensor,
        labels: torch.Tensor,
        rank: torch.Tensor | None = None,
        search: torch.Tensor | None = None,
    ) -> float:
        """hist [B, L], cats [B, C], cont [B, 6], labels [B], rank [B, L], search [B, L] -> the
        batch loss."""
        if search is None:
            search = torch.zeros((len(labels), 1), dtype=torch.long)
        return self.step(hist, search, cats, cont, labels, rank)

    def step(self, *inputs: torch.Tensor | None) -> float:
        """One step on the loss module's ``inputs`` (its forward's arguments before the
        negatives, which are drawn here) -> the batch loss."""
        cfg = self.cfg
        negatives = self.sampler.sample(cfg.negatives) if cfg.loss != "full" else None
        loss = self.net(*inputs, negatives)
        self.opt_sparse.zero_grad()
        self.opt_dense.zero_grad()
        loss.backward()
        distributed.average_gradients(self.tables)
        self.opt_sparse.step()
        self.opt_dense.step()
        return float(loss.detach())


def fit(
    tl: dict[int, UserTimeline],
    ctx: UserContext,
    model_cfg: dict[str, object],
    cfg: TrainConfig,
    on_epoch: Callable[[int, Trained], bool] | None = None,
    warm: Trained | None = None,
) -> Trained:
    """Train on ``tl``. ``on_epoch(epoch, trained)`` may return False to stop early.

    ``warm``: start from this model (the retrainer's current snapshot). Its vocabularies grow
    (new items, tokens and context values get new rows, appended by frequency), existing rows
    and every other weight keep their values; the architecture is the warm model's.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    items = Vocab.build(i for t in tl.values() for s in t.items for i in s)
    tokens = Vocab.build(
        (tok for t in tl.values() for _, toks in t.searches for tok in toks), cfg.max_tokens
    )
    if warm is not None:
        items, tokens = warm.items.grown(items.ids), warm.tokens.grown(tokens.ids)
        ctx = UserContext(
            {n: warm.context.vocabs[n].grown(v.ids) for n, v in ctx.vocabs.items()}, ctx.users
        )
        model_cfg = {
            k: v
            for k, v in warm.model.config.to_dict().items()
            if k not in ("n_items", "n_tokens", "categorical", "n_continuous", "use_search")
        }
    sequential = model_cfg.get("history_encoder") == "sequence"
    seconds = np.array([s for t in tl.values() for s in t.seconds])
    window_end, window_span = float(seconds.max()), float(max(seconds.max() - seconds.min(), 1.0))
    config = CandidateConfig(
        n_items=len(items),
        n_tokens=len(tokens),
        categorical=ctx.sizes(),
        n_continuous=6,
        use_search=cfg.use_search,
        **model_cfg,  # type: ignore[arg-type]
    )
    model = CandidateModel(config)
    if warm is not None:
        _copy_rows(warm.model, model)
    if sequential:
        return _fit_sequences(tl, ctx, model, items, tokens, cfg, window_end, window_span, on_epoch)
    table = build_examples(tl, items, tokens)
    counts = torch.bincount(torch.from_numpy(table.labels), minlength=len(items))
    sampler = NegativeSampler(counts, alpha=cfg.alpha, seed=cfg.seed)
    step = TrainStep(model, cfg, sampler)
    example_age_all = (window_end - table.label_ts) / window_span
    trained = Trained(model, items, tokens, ctx, window_end, window_span, 0.0)
    seen, busy = 0, 0.0
    for epoch in tqdm(range(cfg.epochs), desc="train candidates", disable=not cfg.progress):
        model.train()
        idx = distributed.shard(sample_per_user(table, cfg.per_user, rng))
        batch = distributed.per_rank_batch(cfg.batch_size)
        started = time.perf_counter()
        for lo in range(0, len(idx), batch):
            b = idx[lo : lo + batch]
            cats, cont = _features(
                table.users[b], ctx, example_age_all[b], cfg.use_demographics, cfg.use_example_age
            )
            step(
                torch.from_numpy(table.history[b]),
                cats,
                cont,
                torch.from_numpy(table.labels[b]),
                torch.from_numpy(table.history_rank[b]),
                # no searches in the data (MovieLens): skip the [B, 50] all-PAD token bag
                torch.from_numpy(table.search[b]) if len(tokens) > 1 else None,
            )
        busy += time.perf_counter() - started
        seen += len(idx)
        trained.examples_per_s = seen / busy
        if on_epoch is not None and on_epoch(epoch, trained) is False:
            break
    return trained


def _fit_sequences(
    tl: dict[int, UserTimeline],
    ctx: UserContext,
    model: CandidateModel,
    items: Vocab,
    tokens: Vocab,
    cfg: TrainConfig,
    window_end: float,
    window_span: float,
    on_epoch: Callable[[int, Trained], bool] | None,
) -> Trained:
    """The epochs of the ``sequence`` encoder: whole windows, every next second of a window
    predicted from one pass (:mod:`model.sequence_training`); same loss, sampler, optimizers
    and per-epoch callback as the rollback examples."""
    from model.sequence_training import (
        SequenceLoss,
        build_sequences,
        label_counts,
        train_sequence_epoch,
    )

    table = build_sequences(tl, items, tokens)
    sampler = NegativeSampler(label_counts(table, len(items)), alpha=cfg.alpha, seed=cfg.seed)
    step = TrainStep(model, cfg, sampler, SequenceLoss)
    example_age = (window_end - table.sec_ts) / window_span
    trained = Trained(model, items, tokens, ctx, window_end, window_span, 0.0)
    rng = np.random.default_rng(cfg.seed)

    def features(users: np.ndarray, age: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _features(users, ctx, age, cfg.use_demographics, cfg.use_example_age)

    seen, busy = 0, 0.0
    for epoch in tqdm(range(cfg.epochs), desc="train candidates", disable=not cfg.progress):
        model.train()
        started = time.perf_counter()
        seen += train_sequence_epoch(step.step, table, features, example_age, cfg.per_user, rng)
        busy += time.perf_counter() - started
        trained.examples_per_s = seen / busy
        if on_epoch is not None and on_epoch(epoch, trained) is False:
            break
    return trained


@torch.no_grad()
def _copy_rows(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy every weight of ``src`` into ``dst``; grown tables get their first rows copied."""
    target = dst.state_dict()
    for name, value in src.state_dict().items():
        t = target.get(name)
        if t is None:
            continue
        if t.shape == value.shape:
            t.copy_(value)
        elif t.dim() == value.dim() and t.shape[1:] == value.shape[1:] and len(t) >= len(value):
            t[: len(value)] = value
        else:
            raise ValueError(f"cannot warm-start {name}: {tuple(value.shape)} -> {tuple(t.shape)}")


@torch.no_grad()
def item_matrix(trained: Trained) -> tuple[torch.Tensor, np.ndarray]:
    """([N', D] item vectors of the vocabulary's items, [N'] their item ids)."""
    return trained.model.item_vectors()[1:], np.asarray(trained.items.ids, dtype=np.int64)


@torch.no_grad()
def score_users(
    trained: Trained, tl: dict[int, UserTimeline], users: list[int], cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """([U, N'] scores over the vocabulary's items, [N'] their item ids) at serving time."""
    attrs = [trained.context.users.get(u) for u in users]
    u = user_vectors(trained, [tl.get(u) for u in users], attrs, cfg)
    items, ids = item_matrix(trained)
    return (u @ items.T).numpy(), ids
