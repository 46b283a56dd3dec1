"""The ranking network of paper §4: feature arches + an over-arch MLP, one logit.

Trained with weighted logistic regression (:mod:`model.train_ranker`), so at serving
e^logit ≈ the expected watch time of the impression.

Shapes: R rows, N history ids, D item embedding dim, K categorical features, M continuous
features (3M with powers), H the over-arch input width.

    item [R] ──────────┐ ItemIdArch (one item-id table)   ─► [R, 2D]  ┐
    history [R, N] ────┘   impression emb ‖ mean of history emb       │
    cats [R, K] ─► CategoricalArch (log-sized embeddings) ─► [R, ΣE]  ├─► concat [R, H]
    cont [R, M|3M] ─────────────────────────────────────────────────── ┘       │
    OverArch: ReLU MLP (hidden layers configurable, none = logistic regression) ─► logit [R]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from model.ranking_encoding import embedding_dim


@dataclass(frozen=True)
class RankerConfig:
    """Shape of :class:`RankingModel` (stored in snapshots)."""

    n_items: int
    cat_sizes: dict[str, int] = field(default_factory=dict)
    n_continuous: int = 0  # columns of the continuous input (3× the features with powers)
    hidden: tuple[int, ...] = (256,)
    item_dim: int | None = None  # default: grows with log(vocabulary)

    def resolved_item_dim(self) -> int:
        return self.item_dim or embedding_dim(self.n_items, hi=64)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class ItemIdArch(nn.Module):
    """One item-id embedding table for the impression's item and the last watched items, each
    fed to the network separately (paper §4.1: shared tables, separate inputs)."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(rows, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.05)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.out_dim = 2 * dim

    def forward(self, items: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """items [R], history [R, N] -> [R, 2D]."""
        hist = self.embedding(history)
        count = (history != 0).sum(dim=1, keepdim=True).clamp(min=1)
        return torch.cat([self.embedding(items), hist.sum(dim=1) / count], dim=1)


class CategoricalArch(nn.Module):
    """One embedding per categorical feature, width ∝ log(vocabulary); row 0 is zero."""

    def __init__(self, sizes: dict[str, int]) -> None:
        super().__init__()
        self.names = list(sizes)
        self.embeddings = nn.ModuleDict(
            {n: nn.Embedding(sizes[n], embedding_dim(sizes[n]), padding_idx=0) for n in self.names}
        )
        self.out_dim = sum(e.embedding_dim for e in self.embeddings.values())

    def forward(self, cats: torch.Tensor) -> torch.Tensor:
        """cats [R, K] -> [R, ΣE]."""
        if not self.names:
            return cats.new_zeros((cats.shape[0], 0), dtype=torch.float32)
        return torch.cat([self.embeddings[n](cats[:, k]) for k, n in enumerate(self.names)], dim=1)


class OverArch(nn.Module):
    """ReLU MLP over the concatenated features ending in one logit; no hidden layer = LR."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for w in hidden:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        layers.append(nn.Linear(prev, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [R, H] -> logit [R]."""
        return self.mlp(x).squeeze(1)


class RankingModel(nn.Module):
    """logit = OverArch(ItemIdArch ‖ CategoricalArch ‖ continuous)."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        self.item_ids = ItemIdArch(config.n_items, config.resolved_item_dim())
        self.categorical = CategoricalArch(config.cat_sizes)
        in_dim = self.item_ids.out_dim + self.categorical.out_dim + config.n_continuous
        self.over = OverArch(in_dim, config.hidden)

    def forward(
        self, items: torch.Tensor, history: torch.Tensor, cats: torch.Tensor, cont: torch.Tensor
    ) -> torch.Tensor:
        """items [R], history [R, N], cats [R, K], cont [R, M|3M] -> logit [R]."""
        x = torch.cat([self.item_ids(items, history), self.categorical(cats), cont], dim=1)
        return self.over(x)

    @torch.no_grad()
    def expected_watch_time(self, *inputs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Serving score: e^logit (× the positive-weight scale used in training) [R]."""
        return torch.exp(self.forward(*inputs)) * scale
