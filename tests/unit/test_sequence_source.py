"""The sequence-aware candidate source: second-causal attention, one pass per window, and the
same summary at serving as in training (issue 15, deliverable 3)."""

from __future__ import annotations

import numpy as np
import torch

from model.candidate_inputs import user_vectors
from model.examples import HISTORY_LEN, UserContext
from model.features import Vocab
from model.protocol import UserTimeline
from model.sequence_arch import NOT_A_SLOT, SequenceHistoryArch, second_summaries
from model.sequence_training import (
    build_sequences,
    epoch_windows,
    label_counts,
    tile_windows,
    window_batch,
)
from model.train_candidate import TrainConfig, fit


def _arch(seed: int = 0) -> SequenceHistoryArch:
    torch.manual_seed(seed)
    return SequenceHistoryArch(40, 16, HISTORY_LEN, layers=2, heads=2, dropout=0.0).eval()


def _window(items: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, L] left-padded ids and window seconds of seconds ``items``."""
    ids = [i for sec in items for i in sec]
    second = [k for k, sec in enumerate(items) for _ in sec]
    pad = HISTORY_LEN - len(ids)
    return (
        torch.tensor([[0] * pad + ids]),
        torch.tensor([[NOT_A_SLOT] * pad + second]),
    )


@torch.no_grad()
def test_a_summary_never_sees_a_later_second() -> None:
    """Changing every item of seconds ≥ k+1 leaves the summaries of seconds ≤ k unchanged."""
    arch = _arch()
    a = [[1, 2], [3], [4, 5, 6], [7], [8, 9]]
    b = [[1, 2], [3], [4, 5, 6], [30, 31], [32]]  # seconds 3, 4 differ (and their sizes)
    ha = second_summaries(arch.encode(*_window(a)), _window(a)[1])
    hb = second_summaries(arch.encode(*_window(b)), _window(b)[1])
    torch.testing.assert_close(ha[0, :3], hb[0, :3])
    assert not torch.allclose(ha[0, 3], hb[0, 3])


@torch.no_grad()
def test_items_of_one_second_are_a_set_for_the_next_prediction() -> None:
    """The summary of a second is the mean over its items, which all see each other: what a
    second held matters, not which of its items is predicted next (the rollback rule)."""
    arch = _arch()
    ids, second = _window([[1, 2], [3, 4, 5]])
    h = second_summaries(arch.encode(ids, second), second)
    # the summary of second 0 is the same whether second 1 exists or not
    ids0, second0 = _window([[1, 2]])
    h0 = second_summaries(arch.encode(ids0, second0), second0)
    torch.testing.assert_close(h[0, 0], h0[0, 0])


@torch.no_grad()
def test_serving_reads_the_summary_training_predicts_from() -> None:
    """forward(newest-first history, ranks), the tower's serving input, equals the training
    summary of the window's last second (items of a second in the same order)."""
    arch = _arch()
    seconds = [[1, 2], [3], [4, 5, 6]]
    ids, second = _window(seconds)
    train = second_summaries(arch.encode(ids, second), second)[0, len(seconds) - 1]
    # serving layout (model.protocol.UserTimeline.recent): newest second first, right-padded
    newest_first = [i for sec in reversed(seconds) for i in sec]
    ranks = [r for r, sec in enumerate(reversed(seconds)) for _ in sec]
    pad = HISTORY_LEN - len(newest_first)
    serve = arch(torch.tensor([newest_first + [0] * pad]), torch.tensor([ranks + [0] * pad]))
    torch.testing.assert_close(serve[0], train, atol=1e-5, rtol=1e-5)
    empty = arch(torch.zeros(1, HISTORY_LEN, dtype=torch.long), torch.zeros(1, HISTORY_LEN).long())
    assert torch.count_nonzero(empty) == 0


def _timelines(rng: np.random.Generator, users: int = 30) -> dict[int, UserTimeline]:
    out = {}
    for u in range(1, users + 1):
        n = int(rng.integers(2, 40))
        secs = tuple(float(100 * k) for k in range(n))
        items = tuple(
            tuple(sorted({int(i) for i in rng.integers(1, 60, int(rng.integers(1, 4)))}))
            for _ in range(n)
        )
        out[u] = UserTimeline(u, secs, items)
    return out


def test_windows_predict_every_next_second_once_and_fit_the_serving_length() -> None:
    rng = np.random.default_rng(0)
    tl = _timelines(rng)
    items = Vocab.build(i for t in tl.values() for s in t.items for i in s)
    table = build_sequences(tl, items)
    for u in range(len(table.users)):
        tiles = tile_windows(table, u, HISTORY_LEN, np.random.default_rng(1))
        lo, hi = table.sec_bounds[u], table.sec_bounds[u + 1]
        covered = [k for first, last in tiles for k in range(first, last + 1)]
        assert len(covered) == len(set(covered))  # no second predicts twice per epoch
        assert all(lo <= k < hi - 1 for k in covered)  # each has a next second
        if hi - lo >= 2:  # the newest second is predicted in every epoch
            assert hi - 2 in covered
        for first, last in tiles:
            n = table.sec_start[last + 1] - table.sec_start[first]
            assert n <= HISTORY_LEN or first == last
    windows = epoch_windows(table, 10**6, HISTORY_LEN, np.random.default_rng(2))
    batch = window_batch(table, windows, HISTORY_LEN)
    for q in range(len(batch.labels)):
        b, k = int(batch.query_window[q]), int(batch.query_second[q])
        target = int(batch.target_second[q])
        u, first, _last = windows[b]
        assert target == first + k + 1
        nxt = table.items[table.sec_start[target] : table.sec_start[target + 1]]
        assert int(batch.labels[q]) in nxt.tolist()
        # the window holds nothing from the predicted second or later
        window_secs = batch.second[b][batch.second[b] >= 0]
        assert int(window_secs.max()) + first < target or k < int(window_secs.max())
    # labels: every item of every second after a user's first
    want = sum(
        len(s) for t in tl.values() for s in t.items[1:]
    )  # all items are in the vocabulary here
    assert int(label_counts(table, len(items)).sum()) == want


def test_sequence_fit_learns_a_deterministic_next_item() -> None:
    """Users walk a ring of items (item i is followed by i+1): after training, the user vector
    of a history ending in i scores i+1 first."""
    tl = {}
    for u in range(1, 81):
        start = (u * 7) % 20
        walk = [(start + k) % 20 + 1 for k in range(12)]
        tl[u] = UserTimeline(u, tuple(float(k) for k in range(12)), tuple((i,) for i in walk))
    ctx = UserContext.build({})
    cfg = TrainConfig(
        epochs=25, loss="full", lr=1e-2, use_demographics=False, use_example_age=False, seed=0
    )
    model = {
        "history_encoder": "sequence",
        "depth": 1,
        "embed_dim": 32,
        "out_dim": 32,
        "attention_layers": 1,
    }
    trained = fit(tl, ctx, model, cfg)
    probes = [UserTimeline(0, (0.0, 1.0), ((i,), (i % 20 + 1,))) for i in range(1, 21)]
    u = user_vectors(trained, probes, [None] * len(probes), cfg)
    scores = u @ trained.model.item_vectors().T
    best = [trained.items.ids[int(r) - 1] for r in scores[:, 1:].argmax(dim=1) + 1]
    want = [(i + 1) % 20 + 1 for i in range(1, 21)]
    assert sum(b == w for b, w in zip(best, want, strict=True)) >= 18


def test_ranks_step_through_disjoint_halves_of_one_process_batches(monkeypatch) -> None:
    """Under DDP, rank r's step t holds windows r, r+2, ... of one process's batch t: together
    the ranks train on exactly one process's epoch, in the same steps."""
    import model.sequence_training as st
    from model import distributed

    tl = _timelines(np.random.default_rng(3), users=60)
    items = Vocab.build(i for t in tl.values() for s in t.items for i in s)
    table = build_sequences(tl, items)
    real = st.window_batch

    def batches(rank: int, world: int) -> list[list[tuple[int, int, int]]]:
        seen: list[list[tuple[int, int, int]]] = []

        def recording(table, windows, length):  # type: ignore[no-untyped-def]
            seen.append(list(windows))
            return real(table, windows, length)

        monkeypatch.setattr(st, "window_batch", recording)
        monkeypatch.setattr(distributed, "rank_and_world", lambda: (rank, world))
        age = np.zeros(len(table.sec_ts))
        st.train_sequence_epoch(
            lambda *inputs: 0.0,
            table,
            lambda users, a: (torch.zeros((len(users), 0), dtype=torch.long), torch.zeros(0)),
            age,
            per_user=10**6,
            rng=np.random.default_rng(7),
            windows_per_batch=8,
        )
        return seen

    one, zero_of_two, one_of_two = batches(0, 1), batches(0, 2), batches(1, 2)
    assert len(zero_of_two) == len(one_of_two) >= 5  # same number of steps on both ranks
    assert all(len(b) <= 4 for b in zero_of_two + one_of_two)
    flat = [w for b in one for w in b]
    flat = flat[: len(flat) // 2 * 2]  # the odd window out is dropped, as shard() drops it
    for t, (a, b) in enumerate(zip(zero_of_two, one_of_two, strict=True)):
        assert a == flat[8 * t : 8 * t + 8 : 2] and b == flat[8 * t + 1 : 8 * t + 8 : 2]
    shared = {w for b in zero_of_two for w in b} & {w for b in one_of_two for w in b}
    assert not shared


def test_a_window_with_nothing_in_vocabulary_to_predict_is_not_drawn() -> None:
    """Items outside the vocabulary are inputs, never labels; a window whose next seconds hold
    only such items would be an empty batch on one DDP rank (its peers would wait forever)."""
    tl = {
        # tiles of 2 items: (second 1) predicts second 2, (second 0) predicts the unknown 99
        1: UserTimeline(1, (0.0, 1.0, 2.0), ((1, 2), (99,), (2,))),
        2: UserTimeline(2, (0.0, 1.0), ((2,), (98,))),  # its only label is out of vocabulary
    }
    items = Vocab.build([1, 2])
    table = build_sequences(tl, items)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        assert tile_windows(table, 0, 2, rng) == [(1, 1), (0, 0)]  # both tiles exist
        assert epoch_windows(table, 10**6, 2, rng) == [(0, 1, 1)]  # only one predicts
