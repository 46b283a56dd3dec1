"""History encoders and search/context features of the candidate generator."""

from __future__ import annotations

import numpy as np
import torch

from model.baselines import ease_scores
from model.examples import CATEGORICAL, UserContext, build_examples
from model.features import Vocab
from model.history_attention import AttentionHistoryArch
from model.protocol import UserTimeline, last_second_split


def _arch() -> AttentionHistoryArch:
    torch.manual_seed(0)
    arch = AttentionHistoryArch(rows=20, dim=16, layers=2, heads=2, dropout=0.0)
    arch.eval()
    return arch


def test_attention_ignores_order_within_a_second_but_not_recency() -> None:
    arch = _arch()
    ids = torch.tensor([[3, 4, 5, 0], [4, 3, 5, 0], [3, 4, 5, 0]])
    # rows 0 and 1: items 3 and 4 share second rank 0 in either slot order; row 2 moves item 5
    # from rank 1 (older) to rank 0 (newest)
    ranks = torch.tensor([[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    with torch.no_grad():
        out = arch(ids, ranks)
    assert torch.allclose(out[0], out[1], atol=1e-6)
    assert not torch.allclose(out[0], out[2], atol=1e-3)


def test_attention_empty_history_is_zero_and_finite() -> None:
    arch = _arch()
    with torch.no_grad():
        out = arch(torch.zeros((2, 5), dtype=torch.long), torch.zeros((2, 5), dtype=torch.long))
    assert torch.isfinite(out).all() and (out == 0).all()


def test_recent_ranks_count_seconds_from_the_newest() -> None:
    tl = UserTimeline(1, (10.0, 20.0, 30.0), ((5,), (6, 7), (8,)))
    items, ranks = tl.recent(10)
    assert dict(zip(items, ranks, strict=True)) == {8: 0, 6: 1, 7: 1, 5: 2}


def test_search_tokens_only_from_searches_strictly_before_the_label() -> None:
    tl = UserTimeline(
        1,
        (10.0, 20.0, 30.0),
        ((5,), (6,), (7,)),
        ((9.0, ("cats",)), (20.0, ("dogs",)), (25.0, ("fish", "fish tank"))),
    )
    tokens = Vocab.build(["cats", "dogs", "fish", "fish tank"])
    table = build_examples({1: tl}, Vocab.build([5, 6, 7]), tokens)
    by_label_ts = {
        float(ts): {tokens.ids[r - 1] for r in row if r}
        for ts, row in zip(table.label_ts, table.search, strict=True)
    }
    assert by_label_ts[20.0] == {"cats"}  # the search at second 20 is not before label 20
    assert by_label_ts[30.0] == {"cats", "dogs", "fish", "fish tank"}
    # and a split never lets a search from the target's second into the visible timeline
    split = last_second_split({1: tl})
    assert all(ts < 30.0 for ts, _ in split.timelines[1].searches)


def test_context_encodes_unknown_values_as_row_zero() -> None:
    ctx = UserContext.build({1: {"age": 30, "gender": "F", "device": "tv"}, 2: {"gender": "M"}})
    rows, age = ctx.encode({"gender": "F", "device": "fridge", "age": 50})
    named = dict(zip(CATEGORICAL, rows, strict=True))
    assert named["gender"] == ctx.vocabs["gender"].row("F") != 0
    assert named["device"] == 0 and age == 0.5  # unseen device -> zero embedding
    assert list(CATEGORICAL) == sorted(CATEGORICAL)  # the column order ContextArch embeds
    cats, ages = ctx.arrays()
    assert cats.shape == (3, 4) and ages[2] == 0.0


def test_ease_recommends_the_co_watched_item() -> None:
    # items 0 and 1 are always watched together; item 2 is independent noise
    rng = np.random.default_rng(0)
    x = np.zeros((200, 4), dtype=np.float32)
    pair = rng.random(200) < 0.5
    x[pair, 0] = x[pair, 1] = 1.0
    x[:, 2] = rng.random(200) < 0.5
    x[:, 3] = rng.random(200) < 0.2
    user = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    x_scores = ease_scores(np.vstack([x, user]), lam=10.0)[-1]
    assert int(np.argmax(x_scores[1:])) + 1 == 1
