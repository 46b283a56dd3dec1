"""A sequence-aware history encoder (beyond the paper): self-attention over the recent watches.

The paper averages the watch history, which throws away *when* each item was watched. This arch
embeds each history item, adds an embedding of its **recency rank** (0 = the newest second of the
history, 1 = the second before, ...), runs a small pre-norm Transformer encoder over the bag and
mean-pools the outputs. Items watched in the same second share a rank and attention is
permutation-equivariant, so no order among same-second items can leak into the vector (the
``ml100k-lastsecond`` rule); the whole bag is strictly before the label, so no causal mask is
needed.

Shapes: B batch, L bag length (≤ 50), D embedding dim.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_RANK = 50  # ranks beyond this share the last rank embedding


def item_embedding(rows: int, dim: int) -> nn.Embedding:
    """[rows, dim] item table of a history encoder: sparse gradients (a step touches only the
    rows in the batch), row 0 = PAD / out of vocabulary, zero and never updated."""
    table = nn.Embedding(rows, dim, padding_idx=0, sparse=True)
    nn.init.normal_(table.weight, std=0.05)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


class AttentionHistoryArch(nn.Module):
    """ids [B, L] + recency ranks [B, L] -> [B, D] (zero vector for an empty history)."""

    def __init__(self, rows: int, dim: int, layers: int = 2, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.embedding = item_embedding(rows, dim)
        self.rank = nn.Embedding(MAX_RANK + 1, dim)
        nn.init.normal_(self.rank.weight, std=0.05)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """ids [B, L], ranks [B, L] -> [B, D]."""
        pad = ids == 0  # [B, L]
        empty = pad.all(dim=1)  # [B]
        # An all-PAD row would make attention divide by zero: let it attend to its first slot,
        # then zero its output below.
        pad = pad & ~(empty.unsqueeze(1) & (torch.arange(ids.shape[1]) == 0).unsqueeze(0))
        x = self.embedding(ids) + self.rank(ranks.clamp(0, MAX_RANK))  # [B, L, D]
        h = self.norm(self.encoder(x, src_key_padding_mask=pad))  # [B, L, D]
        keep = (~pad).unsqueeze(2).float()
        pooled = (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)  # [B, D]
        return pooled.masked_fill(empty.unsqueeze(1), 0.0)


class RecencyBagArch(nn.Module):
    """A cheap middle ground: a weighted mean of item embeddings, the weight of each item a learned
    function of its recency rank (softmax over the bag). ids [B, L] + ranks [B, L] -> [B, D]."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.embedding = item_embedding(rows, dim)
        self.rank_logit = nn.Embedding(MAX_RANK + 1, 1)
        nn.init.zeros_(self.rank_logit.weight)  # starts as the paper's plain mean

    def forward(self, ids: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """ids [B, L], ranks [B, L] -> [B, D]."""
        logit = self.rank_logit(ranks.clamp(0, MAX_RANK)).squeeze(2)  # [B, L]
        logit = logit.masked_fill(ids == 0, float("-inf"))
        weight = torch.softmax(logit, dim=1).nan_to_num(0.0)  # all-PAD rows -> 0
        return (weight.unsqueeze(2) * self.embedding(ids)).sum(dim=1)
