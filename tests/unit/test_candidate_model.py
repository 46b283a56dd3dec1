"""Candidate generation: protocol, metrics, rollback examples, sampled softmax + logQ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.candidate import CandidateConfig, CandidateModel
from model.datasets.movielens import MovieLens
from model.examples import build_examples, sample_per_user
from model.features import Vocab
from model.metrics import user_metrics
from model.protocol import split_test_validation, timelines
from model.sampled_softmax import NegativeSampler, full_softmax_loss, sampled_softmax_loss
from tests.mldata import random_movielens


def toy_data() -> MovieLens:
    # user 1: seconds 10 {5}, 20 {6, 7}, 30 {8, 9}; user 2: 10 {5}, 15 {6}, 40 {7}
    rows = [
        (1, 5, 10),
        (1, 7, 20),
        (1, 6, 20),
        (1, 9, 30),
        (1, 8, 30),
        (2, 5, 10),
        (2, 6, 15),
        (2, 7, 40),
    ]
    u, i, t = (np.array(c) for c in zip(*rows, strict=True))
    return MovieLens(u, i, np.ones(len(rows), np.float32), t.astype(np.float64))


def test_last_second_split_takes_the_whole_last_second() -> None:
    test, val = split_test_validation(toy_data())
    assert test.targets[1] == {8, 9} and test.timelines[1].seconds == (10.0, 20.0)
    assert val.targets[1] == {6, 7} and val.timelines[1].items == ((5,),)
    assert test.targets[2] == {7} and val.targets[2] == {6}


def test_bag_takes_whole_seconds_only() -> None:
    tl = timelines(toy_data())[1]
    assert sorted(tl.bag(2)) == [8, 9]  # the newest second alone fills it
    assert sorted(tl.bag(3)) == [8, 9]  # second 20 would not fit whole
    assert sorted(tl.bag(4)) == [6, 7, 8, 9]


def test_no_example_sees_its_label_second_or_later() -> None:
    data = random_movielens(seed=0, n=3000, users=30, items=199, seconds=400)
    tl = timelines(data)
    items = Vocab.build(i for t in tl.values() for s in t.items for i in s)
    table = build_examples(tl, items)
    assert len(table.labels) > 1000
    assert (table.history_max_ts < table.label_ts).all()
    # and every history item really was watched strictly before the label's second
    by_user = {
        u: {
            i: min(s for s, its in zip(t.seconds, t.items, strict=True) if i in its)
            for its in t.items
            for i in its
        }
        for u, t in tl.items()
    }
    for e in range(0, len(table.labels), 97):
        u, ts = int(table.users[e]), table.label_ts[e]
        for row in table.history[e][table.history[e] != 0]:
            assert by_user[u][items.ids[row - 1]] < ts


def test_fixed_number_of_examples_per_user() -> None:
    rng = np.random.default_rng(1)
    data = MovieLens(
        np.r_[np.zeros(500, int), np.ones(20, int)],
        rng.integers(1, 50, 520),
        np.ones(520, np.float32),
        np.arange(520, dtype=np.float64),
    )
    tl = timelines(data)
    table = build_examples(tl, Vocab.build(data.items_col.tolist()))
    picked = sample_per_user(table, 16, rng)
    counts = np.bincount(table.users[picked])
    assert counts[0] == 16 and counts[1] == 16


def test_metrics_match_hand_computation() -> None:
    ranked = np.array([3, 1, 7, *list(range(100, 200))])
    m = user_metrics(ranked, {1, 7, 999})
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["HR10"] == 1.0 and m["R50"] == pytest.approx(2 / 3)
    assert m["NDCG10"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / ideal)


def test_model_shapes_and_config_validation() -> None:
    cfg = CandidateConfig(
        n_items=11, depth=3, width_factor=0.0625, categorical={"g": 3}, n_continuous=6
    )
    model = CandidateModel(cfg)
    u = model.user_vector(
        torch.randint(0, 11, (4, 7)),
        torch.zeros((4, 1), dtype=torch.long),
        torch.zeros((4, 1), dtype=torch.long),
        torch.rand(4, 6),
    )
    assert u.shape == (4, cfg.out_dim) and model.item_vectors().shape == (11, cfg.out_dim)
    with pytest.raises(ValueError, match="depth"):
        CandidateConfig(n_items=11, depth=7)


def _train_item_scores(
    loss: str, logq: bool, k: int, skew: float = 1.0, seed: int = 0
) -> torch.Tensor:
    """Learn per-class logits from a skewed proposal; return the learned scores of the classes."""
    torch.manual_seed(seed)
    n = 8
    true_p = torch.tensor([0.0, 0.36, 0.24, 0.16, 0.11, 0.07, 0.04, 0.02])
    emb = torch.nn.Embedding(n, 1)
    torch.nn.init.zeros_(emb.weight)
    user = torch.ones(1024, 1)
    # proposal q ∝ p^skew. With skew 1.5 the negatives favour popular classes more than the truth
    # does, so uncorrected sampled softmax learns log p − log q ≈ −0.5 log p: the order reversed
    counts = true_p.pow(skew) * 1e6
    sampler = NegativeSampler(counts, alpha=1.0, seed=seed)
    opt = torch.optim.Adam(emb.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(600):
        labels = torch.multinomial(true_p, 1024, replacement=True, generator=gen)
        if loss == "full":
            out = full_softmax_loss(user, labels, emb.weight)
        else:
            out = sampled_softmax_loss(
                user, labels, emb, sampler.sample(k), sampler.log_q if logq else None
            )
        opt.zero_grad()
        out.backward()
        opt.step()
    return emb.weight[1:, 0].detach()


def test_logq_correction_recovers_the_true_preference_order() -> None:
    corrected = _train_item_scores("sampled", logq=True, k=32, skew=1.5)
    uncorrected = _train_item_scores("sampled", logq=False, k=32, skew=1.5)
    order = torch.arange(7)
    assert torch.equal(torch.argsort(corrected, descending=True), order)
    # uncorrected: the popularity skew of the negatives inverts the learned preferences
    rank = torch.argsort(torch.argsort(uncorrected, descending=True)).float()
    spearman = torch.corrcoef(torch.stack([rank, order.float()]))[0, 1]
    assert spearman < 0


def test_sampled_softmax_approaches_full_softmax_as_k_grows() -> None:
    full = torch.softmax(_train_item_scores("full", logq=True, k=0), 0)
    gaps = [
        float((torch.softmax(_train_item_scores("sampled", True, k), 0) - full).abs().sum())
        for k in (2, 64)
    ]
    assert gaps[1] < gaps[0]
    assert gaps[1] < 0.1


def test_warm_start_grows_vocabularies_and_keeps_existing_rows() -> None:
    """Retraining from the current snapshot: old items keep their row numbers and, before any
    step, their embeddings; items that appeared since get new rows."""
    from dataclasses import replace

    from model.evaluate_candidates import user_context
    from model.protocol import timelines
    from model.train_candidate import TrainConfig, fit
    from tests.mldata import random_movielens

    old_data = random_movielens(seed=5, n=1500, users=40, items=120, seconds=900)
    cfg = TrainConfig(epochs=1, loss="sampled", negatives=32, seed=0)
    model_cfg = {"depth": 1, "width_factor": 0.125, "history_encoder": "recency"}
    old = fit(timelines(old_data), user_context(old_data), model_cfg, cfg)
    new_data = random_movielens(seed=6, n=1500, users=40, items=160, seconds=900)
    frozen = fit(timelines(new_data), user_context(new_data), {}, replace(cfg, epochs=0), warm=old)
    assert frozen.items.ids[: len(old.items.ids)] == old.items.ids
    assert len(frozen.items) > len(old.items)  # items 121..160 exist only in the new data
    n = len(old.items)
    assert torch.equal(frozen.model.item_out.weight[:n], old.model.item_out.weight)
    assert torch.equal(frozen.model.tower.mlp[0].weight, old.model.tower.mlp[0].weight)
    assert frozen.model.config.history_encoder == "recency"  # the warm model's architecture
    trained = fit(timelines(new_data), user_context(new_data), {}, cfg, warm=old)
    assert not torch.equal(trained.model.item_out.weight[:n], old.model.item_out.weight)
