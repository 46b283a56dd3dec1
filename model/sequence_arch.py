"""The sequence-aware history encoder: causal self-attention over the watch sequence, trained
one pass per user sequence (issue 15, deliverable 3; SASRec-style, beyond the paper).

The paper averages the watch history; :class:`SequenceHistoryArch` runs a small pre-norm
Transformer over the items in time order with a **second-causal** mask: an item attends to items
of its own second and of earlier seconds, never later ones. The summary that predicts second s
is the mean output over the items of second s−1, so

* one forward pass over a user's window yields the input of every next-second prediction in it
  (:meth:`SequenceHistoryArch.encode` + :func:`second_summaries`, used by training);
* no item of second s is visible to the summary that predicts it, and items of one second never
  see each other as labels (the ``ml100k-lastsecond`` rollback rule);
* serving (:meth:`SequenceHistoryArch.forward`, the user tower's history input) is the same
  computation over the newest ≤ L items: the summary of the newest second.

Positions are learned, counted from the window's oldest item: causal like the mask (an item's
input never depends on how many items follow it), and at serving the oldest of the newest ≤ L
items is position 0, as the oldest item of a training window is.

Shapes: B windows (users), L window length (= the serving history, 50), D embedding dim,
S ≤ L seconds in a window.
"""

from __future__ import annotations

import torch
from torch import nn

from model.history_attention import item_embedding

NOT_A_SLOT = -1  # the second index of a padding slot
MAX_DISTANCE = 50  # seconds between query and key beyond this share one attention bias


class CausalBlock(nn.Module):
    """Pre-norm self-attention + feed-forward over a second-causal mask, with a learned bias
    per head and per distance in seconds between query and key (0 = same second): how recent
    an item is, relative to the prediction, is known to every head without the positions
    having to encode it, the same way in a training window as at serving."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.distance = nn.Embedding(MAX_DISTANCE + 1, heads)
        nn.init.zeros_(self.distance.weight)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, blocked: torch.Tensor, distance: torch.Tensor
    ) -> torch.Tensor:
        """x [B, L, D], blocked [B, L, L] (True: query i may not see key j), distance [B, L, L]
        seconds from key j to query i (clamped to [0, MAX_DISTANCE]) -> [B, L, D]."""
        b, n, _ = x.shape
        bias = self.distance(distance).permute(0, 3, 1, 2).reshape(b * self.heads, n, n)
        mask = bias.masked_fill(blocked.repeat_interleave(self.heads, dim=0), float("-inf"))
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.norm2(x)))


class SequenceHistoryArch(nn.Module):
    """ids [B, L] + recency ranks [B, L] (newest first, as the tower's other encoders read the
    history) -> [B, D]; the zero vector for an empty history."""

    def __init__(
        self,
        rows: int,
        dim: int,
        length: int,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.length = length
        self.embedding = item_embedding(rows, dim)
        self.position = nn.Embedding(length, dim)
        nn.init.normal_(self.position.weight, std=0.05)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def encode(self, ids: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """ids [B, L] in time order, left-padded with 0; second [B, L] the non-decreasing
        second index of each slot (:data:`NOT_A_SLOT` for padding) -> outputs [B, L, D]."""
        n = ids.shape[1]
        if n > self.length:
            raise ValueError(f"window of {n} slots, the encoder has {self.length} positions")
        pad = ids == 0
        # slot i may see slot j only if j is a real item of i's second or an earlier one
        blocked = (second.unsqueeze(1) > second.unsqueeze(2)) | pad.unsqueeze(1)  # [B, L, L]
        # a padding slot sees only itself (a row of all True would give NaN); never read
        eye = torch.eye(n, dtype=torch.bool).unsqueeze(0)
        blocked = blocked & ~(pad.unsqueeze(2) & eye)
        # positions count from the window's oldest item, so no slot's input depends on how
        # many items come after it (a window's later seconds are the labels of its earlier ones)
        pos = ((~pad).long().cumsum(dim=1) - 1).clamp(min=0)
        x = self.embedding(ids) + self.position(pos)
        distance = (second.unsqueeze(2) - second.unsqueeze(1)).clamp(0, MAX_DISTANCE)
        for block in self.blocks:
            x = block(x, blocked, distance)
        return self.norm(x).masked_fill(pad.unsqueeze(2), 0.0)

    def forward(self, ids: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """ids [B, L] newest first, right-padded; ranks [B, L] (0 = the newest second) ->
        the summary of the newest second [B, D] (what predicts the next one)."""
        # time order, left-padded, each second's items in their given order (as training
        # windows hold them): a stable sort, oldest second first, padding before everything
        pad = ids == 0
        key = torch.where(pad, torch.full_like(ranks, -(1 << 30)), -ranks)
        order = torch.sort(key, dim=1, stable=True).indices
        ids_t = ids.gather(1, order)
        second = torch.where(ids_t == 0, NOT_A_SLOT, -ranks.gather(1, order))
        h = self.encode(ids_t, second)
        newest = (ids_t != 0) & (second == second.max(dim=1, keepdim=True).values)
        keep = newest.unsqueeze(2).float()
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def second_summaries(h: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """h [B, L, D] outputs of :meth:`SequenceHistoryArch.encode`, second [B, L] with the
    window's seconds numbered 0..S−1 (:data:`NOT_A_SLOT` for padding) -> [B, L, D]: row k is
    the mean output over the items of window second k (zero where there is none)."""
    b, n, d = h.shape
    real = second >= 0
    idx = torch.where(real, second, 0)
    sums = torch.zeros(b, n, d, dtype=h.dtype).scatter_add(
        1, idx.unsqueeze(2).expand(b, n, d), h * real.unsqueeze(2)
    )
    counts = torch.zeros(b, n, dtype=h.dtype).scatter_add(1, idx, real.to(h.dtype))
    return sums / counts.clamp(min=1.0).unsqueeze(2)
