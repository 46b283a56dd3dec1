"""Sequence-wise training of the ``sequence`` candidate generator (issue 15, deliverable 3).

Instead of one rollback example per label with its own 50-item bag (:mod:`model.examples`),
each training row is a **window** of one user's sequence: the whole seconds ending at some
second, at most L items, exactly as serving takes the newest ≤ L items. One forward pass of
:class:`~model.sequence_arch.SequenceHistoryArch` over the window gives the summary of every
second in it; the summary of window second k, joined with the side inputs of second k+1 (its
search tokens strictly before it, the user's context, its example age: the paper's inputs), goes
through the user tower and predicts the items of second k+1 (sampled softmax with logQ, or the
full softmax, as :class:`~model.train_candidate.TrainStep` does for the other encoders).

Windows per epoch: each user's sequence is tiled from its end into windows of whole seconds;
``TrainConfig.per_user`` caps the labels a user contributes per epoch (as the rollback trainer
caps examples), by drawing that many labels' worth of the user's tiles at random.

Under DDP (``torchrun``) every rank draws the same epoch of windows (same seed) and takes an
equal, disjoint share of it, in batches of ``B / world`` windows, as the rollback trainer shards
its examples (:func:`model.distributed.shard`): the ranks together step through one process's
batches. A rank's loss is the mean over its own predictions, so the averaged gradient weights the
two halves of a batch equally rather than by their label counts: close to one process, not
bit-equal.

Shapes: U users, T items over all users, S seconds over all users, B windows, L window slots,
Q predictions of a batch (one per label item), D embedding dim, H user-vector dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model import distributed
from model.candidate import CandidateModel
from model.examples import HISTORY_LEN
from model.features import Vocab, pad_bags
from model.protocol import UserTimeline
from model.sampled_softmax import full_softmax_loss, sampled_softmax_loss
from model.sequence_arch import NOT_A_SLOT, SequenceHistoryArch, second_summaries

WINDOWS_PER_BATCH = 64  # B: a batch of B windows holds ~B × 40 predictions on ML-100K


@dataclass
class SequenceTable:
    """Every user's sequence as flat arrays (items in time order, seconds indexed)."""

    users: np.ndarray  # [U] user ids
    sec_bounds: np.ndarray  # [U + 1] user u's seconds are sec_bounds[u]:sec_bounds[u+1]
    sec_start: np.ndarray  # [S + 1] flat item offset of each second's first item (+ the end)
    sec_ts: np.ndarray  # [S] the second's time
    items: np.ndarray  # [T] item rows (0 = out of vocabulary: in the input, never a label)
    search: np.ndarray  # [S, 50] token rows of the searches strictly before each second


def build_sequences(
    tl: dict[int, UserTimeline], items: Vocab, tokens: Vocab | None = None
) -> SequenceTable:
    """The sequences of ``tl``; search bags only when there are tokens (MovieLens has none)."""
    users, bounds, starts, stamps, rows, searches = [], [0], [0], [], [], []
    with_search = tokens is not None and len(tokens) > 1
    for user in sorted(tl):
        t = tl[user]
        users.append(user)
        for second, its in zip(t.seconds, t.items, strict=True):
            rows.extend(items.rows(its))
            starts.append(len(rows))
            stamps.append(second)
            if with_search and tokens is not None:
                searches.append(tokens.rows(t.tokens_before(second, HISTORY_LEN)))
        bounds.append(len(stamps))
    return SequenceTable(
        np.asarray(users, dtype=np.int64),
        np.asarray(bounds, dtype=np.int64),
        np.asarray(starts, dtype=np.int64),
        np.asarray(stamps, dtype=np.float64),
        np.asarray(rows, dtype=np.int64),
        pad_bags(searches, HISTORY_LEN) if with_search else np.zeros((len(stamps), 1), np.int64),
    )


def tile_windows(
    table: SequenceTable, u: int, length: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """User ``u``'s windows as (first second, last second) global indices, tiled from the end:
    each window is the whole seconds ending at its last second that fit ``length`` items (the
    last second alone, cut to its newest items, if it is longer). The first tile ends at the
    user's second-to-last second (its window predicts the newest second, every epoch); for a
    user with more than ``length`` items it holds a random share of ``length``, so the older
    tiles' boundaries move between epochs."""
    lo, hi = int(table.sec_bounds[u]), int(table.sec_bounds[u + 1])
    if hi - lo < 2:
        return []
    items = int(table.sec_start[hi] - table.sec_start[lo])
    budget = length - int(rng.integers(0, length // 2)) if items > length else length
    last = hi - 2
    out = []
    while last >= lo:
        first = last
        while first > lo and table.sec_start[last + 1] - table.sec_start[first - 1] <= budget:
            first -= 1
        out.append((first, last))
        last, budget = first - 1, length
    return out


@dataclass
class WindowBatch:
    """B windows and the Q predictions they make (tensors for :class:`SequenceLoss`)."""

    ids: torch.Tensor  # [B, L] item rows in time order, left-padded
    second: torch.Tensor  # [B, L] window second 0..S_w−1 of each slot, NOT_A_SLOT for padding
    query_window: torch.Tensor  # [Q] the window of each prediction
    query_second: torch.Tensor  # [Q] the window second whose summary predicts
    labels: torch.Tensor  # [Q] item rows of the next second
    target_second: np.ndarray  # [Q] global index of the predicted second (side inputs)
    users: np.ndarray  # [Q] user ids


def window_batch(
    table: SequenceTable, windows: Sequence[tuple[int, int, int]], length: int
) -> WindowBatch:
    """The tensors of ``windows`` ((user row, first second, last second) each)."""
    ids = np.zeros((len(windows), length), dtype=np.int64)
    second = np.full((len(windows), length), NOT_A_SLOT, dtype=np.int64)
    qw, qs, labels, target, users = [], [], [], [], []
    for b, (u, first, last) in enumerate(windows):
        lo, hi = int(table.sec_start[first]), int(table.sec_start[last + 1])
        lo = max(lo, hi - length)  # a single second longer than the window: its newest items
        n = hi - lo
        ids[b, length - n :] = table.items[lo:hi]
        sec_of = np.searchsorted(table.sec_start, np.arange(lo, hi), side="right") - 1
        second[b, length - n :] = sec_of - first
        for k in range(first, last + 1):
            nxt = table.items[table.sec_start[k + 1] : table.sec_start[k + 2]]
            for row in nxt[nxt > 0]:
                qw.append(b)
                qs.append(k - first)
                labels.append(int(row))
                target.append(k + 1)
                users.append(int(table.users[u]))
    return WindowBatch(
        torch.from_numpy(ids),
        torch.from_numpy(second),
        torch.as_tensor(qw, dtype=torch.long),
        torch.as_tensor(qs, dtype=torch.long),
        torch.as_tensor(labels, dtype=torch.long),
        np.asarray(target, dtype=np.int64),
        np.asarray(users, dtype=np.int64),
    )


class SequenceLoss(torch.nn.Module):
    """The loss of a window batch as a module (for :class:`~model.train_candidate.TrainStep`,
    which may wrap it in DDP)."""

    def __init__(self, model: CandidateModel, loss: str, log_q: torch.Tensor | None) -> None:
        super().__init__()
        if not isinstance(model.history, SequenceHistoryArch):
            raise ValueError("sequence-wise training needs history_encoder='sequence'")
        self.model, self.loss, self.log_q = model, loss, log_q

    def forward(
        self,
        ids: torch.Tensor,
        second: torch.Tensor,
        query_window: torch.Tensor,
        query_second: torch.Tensor,
        search: torch.Tensor,
        cats: torch.Tensor,
        cont: torch.Tensor,
        labels: torch.Tensor,
        negatives: torch.Tensor | None,
    ) -> torch.Tensor:
        """ids, second [B, L]; query_* [Q]; search [Q, 50]; cats [Q, K]; cont [Q, 6];
        labels [Q]; negatives [K'] -> scalar loss."""
        model = self.model
        history = model.history
        assert isinstance(history, SequenceHistoryArch)
        summaries = second_summaries(history.encode(ids, second), second)  # [B, L, D]
        h = summaries[query_window, query_second]  # [Q, D]
        u = model.tower_from(h, search, cats, cont)  # [Q, H]
        if self.loss == "full" or negatives is None:
            return full_softmax_loss(u, labels, model.item_vectors())
        return sampled_softmax_loss(u, labels, model.output_vectors, negatives, self.log_q)


def label_counts(table: SequenceTable, n_items: int) -> torch.Tensor:
    """[N] how often each item row is a label: every item of a second after a user's first
    (the logQ correction's proposal, as the rollback trainer counts its labels)."""
    label = np.ones(len(table.items), dtype=bool)
    for u in range(len(table.users)):
        first = int(table.sec_bounds[u])
        if first < int(table.sec_bounds[u + 1]):
            label[table.sec_start[first] : table.sec_start[first + 1]] = False
    rows = table.items[label & (table.items > 0)]
    return torch.bincount(torch.from_numpy(rows), minlength=n_items)


def epoch_windows(
    table: SequenceTable, per_user: int, length: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """This epoch's windows, shuffled: per user, tiles drawn at random until they hold about
    ``per_user`` labels (at least one tile)."""
    out: list[tuple[int, int, int]] = []
    for u in range(len(table.users)):
        tiles = tile_windows(table, u, length, rng)
        if not tiles:
            continue
        rng.shuffle(tiles)  # type: ignore[arg-type]
        labels = 0
        for first, last in tiles:
            nxt = table.items[table.sec_start[first + 1] : table.sec_start[last + 2]]
            if not (nxt > 0).any():
                continue  # nothing to predict; so no batch is empty, and DDP ranks step alike
            out.append((u, first, last))
            labels += int(table.sec_start[last + 2] - table.sec_start[first + 1])
            if labels >= per_user:
                break
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def train_sequence_epoch(
    step: Callable[..., float],
    table: SequenceTable,
    ctx_features: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    example_age: np.ndarray,
    per_user: int,
    rng: np.random.Generator,
    windows_per_batch: int = WINDOWS_PER_BATCH,
) -> int:
    """One epoch; returns how many predictions (labels) it trained on.

    ``step(*inputs)`` is :meth:`TrainStep.step` over a :class:`SequenceLoss`;
    ``ctx_features(users, example_age)`` the context tensors of Q predictions;
    ``example_age`` [S] of every second (the trainer's window end minus its time, normalized).
    """
    every = epoch_windows(table, per_user, HISTORY_LEN, rng)
    windows = [every[i] for i in distributed.shard(np.arange(len(every)))]
    per_batch = distributed.per_rank_batch(windows_per_batch)
    seen = 0
    for lo in range(0, len(windows), per_batch):
        batch = window_batch(table, windows[lo : lo + per_batch], HISTORY_LEN)
        cats, cont = ctx_features(batch.users, example_age[batch.target_second])
        step(
            batch.ids,
            batch.second,
            batch.query_window,
            batch.query_second,
            torch.from_numpy(table.search[batch.target_second]),
            cats,
            cont,
            batch.labels,
        )
        seen += len(batch.labels)
    return seen
