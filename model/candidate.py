"""The candidate generator of paper §3: a user tower over averaged bags and context.

Shapes: B batch, L bag length (≤ 50), D item/token embedding dim, C context width,
H tower output (= the user vector's dim, equal to the output item embedding dim), N items.

    history ids [B, L] ─► history: BagArch (mean of item embeddings)  ─► [B, D] ┐
    search ids  [B, L] ─► search: BagArch (mean of token embeddings)  ─► [B, D] ├─► concat ─┐
    context (cat ids, continuous) ─► ContextArch                      ─► [B, C] ┘          │
    UserTower (ReLU MLP) ─► u [B, H]  ◄──────────────────────────────────────────────────────┘
    item_out: [N, H] output embeddings v_i; P(w = i | u) ∝ exp(u · v_i)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.examples import HISTORY_LEN
from model.history_attention import AttentionHistoryArch, RecencyBagArch
from model.sequence_arch import SequenceHistoryArch

PAPER_WIDTHS: dict[int, tuple[int, ...]] = {
    0: (),
    1: (256,),
    2: (512, 256),
    3: (1024, 512, 256),
    4: (2048, 1024, 512, 256),
}


HISTORY_ENCODERS = ("mean", "recency", "attention", "sequence")
# the encoders that read each history slot's recency rank
RankedHistory = AttentionHistoryArch | RecencyBagArch | SequenceHistoryArch


@dataclass(frozen=True)
class CandidateConfig:
    """Hyper-parameters of :class:`CandidateModel` (stored in snapshots)."""

    n_items: int  # rows of the item vocabulary, including the PAD/OOV row 0
    n_tokens: int = 1
    embed_dim: int = 64
    depth: int = 2
    width_factor: float = 0.25
    out_dim: int = 64
    categorical: dict[str, int] = field(default_factory=dict)  # name -> vocabulary rows
    cat_dim: int = 8
    n_continuous: int = 0
    dropout: float = 0.0
    use_history: bool = True
    use_search: bool = True
    # "mean" is the paper's bag; "recency" and "attention" weigh or attend over the bag
    # (model/history_attention.py); "sequence" is second-causal self-attention trained one
    # pass per user sequence (model/sequence_arch.py, model/sequence_training.py).
    history_encoder: str = "mean"
    attention_layers: int = 2
    attention_heads: int = 2
    # Beyond the paper, both measured in the evaluation: one item table for the history bag and
    # the softmax (needs embed_dim == out_dim), and cosine scores scaled by 1/temperature.
    tie_item_embeddings: bool = False
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.n_items < 2:
            raise ValueError(
                f"n_items must count the PAD row and at least one item, got {self.n_items}"
            )
        if self.depth not in PAPER_WIDTHS:
            raise ValueError(f"depth must be one of {sorted(PAPER_WIDTHS)}, got {self.depth}")
        if self.width_factor <= 0:
            raise ValueError("width_factor must be positive")
        if self.tie_item_embeddings and self.embed_dim != self.out_dim:
            raise ValueError("tie_item_embeddings needs embed_dim == out_dim")
        if self.history_encoder not in HISTORY_ENCODERS:
            raise ValueError(
                f"history_encoder must be {'|'.join(HISTORY_ENCODERS)}, got {self.history_encoder}"
            )
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError("temperature must be positive")

    def widths(self) -> tuple[int, ...]:
        """Hidden widths: the paper's, scaled, with the last layer sized to ``out_dim``."""
        scaled = [max(8, round(w * self.width_factor)) for w in PAPER_WIDTHS[self.depth]]
        return tuple(scaled)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class BagArch(nn.Module):
    """Mean of the embeddings of a padded id bag; PAD (0) rows are excluded from the mean.

    An all-PAD bag (no history) gives the zero vector.
    """

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(rows, dim, mode="sum", padding_idx=0, sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.05)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, L] -> [B, D]."""
        summed = self.embedding(ids)
        count = (ids != 0).sum(dim=1, keepdim=True).clamp(min=1)
        return summed / count


class ContextArch(nn.Module):
    """Embeds categorical context (gender, occupation, region, device...) and passes continuous
    features (age, example age with their powers) through; output [B, C]."""

    def __init__(self, categorical: dict[str, int], cat_dim: int, n_continuous: int) -> None:
        super().__init__()
        self.names = sorted(categorical)
        self.embeddings = nn.ModuleDict(
            {n: nn.Embedding(categorical[n], cat_dim, padding_idx=0) for n in self.names}
        )
        self.out_dim = cat_dim * len(self.names) + n_continuous

    def forward(self, cats: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        """cats [B, len(names)] int64, cont [B, n_continuous] -> [B, C]."""
        parts = [self.embeddings[n](cats[:, i]) for i, n in enumerate(self.names)]
        parts.append(cont)
        return torch.cat(parts, dim=1)


class UserTower(nn.Module):
    """ReLU MLP (depth 0–4, paper widths × factor) ending in a linear map to the user vector."""

    def __init__(self, in_dim: int, widths: tuple[int, ...], out_dim: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            prev = w
        layers.append(nn.Linear(prev, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_dim] -> u [B, H]."""
        return self.mlp(x)


class CandidateModel(nn.Module):
    """User tower + output item embeddings; scores are dot products u · v_i."""

    def __init__(self, config: CandidateConfig) -> None:
        super().__init__()
        self.config = config
        self.history: BagArch | AttentionHistoryArch | RecencyBagArch | SequenceHistoryArch
        if config.history_encoder == "sequence":
            self.history = SequenceHistoryArch(
                config.n_items,
                config.embed_dim,
                HISTORY_LEN,
                config.attention_layers,
                config.attention_heads,
                config.dropout,
            )
        elif config.history_encoder == "recency":
            self.history = RecencyBagArch(config.n_items, config.embed_dim)
        elif config.history_encoder == "attention":
            self.history = AttentionHistoryArch(
                config.n_items,
                config.embed_dim,
                config.attention_layers,
                config.attention_heads,
                config.dropout,
            )
        else:
            self.history = BagArch(config.n_items, config.embed_dim)
        self.search = BagArch(max(config.n_tokens, 2), config.embed_dim)
        self.context = ContextArch(config.categorical, config.cat_dim, config.n_continuous)
        in_dim = 2 * config.embed_dim + self.context.out_dim
        self.tower = UserTower(in_dim, config.widths(), config.out_dim, config.dropout)
        self.item_out = nn.Embedding(config.n_items, config.out_dim, sparse=True)
        nn.init.normal_(self.item_out.weight, std=0.05)
        if config.tie_item_embeddings:
            self.history.embedding.weight = self.item_out.weight

    def user_vector(
        self,
        history: torch.Tensor,
        search: torch.Tensor,
        cats: torch.Tensor,
        cont: torch.Tensor,
        history_rank: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """history [B, L], search [B, L], cats [B, K], cont [B, M] -> u [B, H].

        ``history_rank`` [B, L] (recency rank per history slot) is needed only by the attention
        encoder; the mean bag ignores order by design.
        """
        if isinstance(self.history, RankedHistory):
            if history_rank is None:
                raise ValueError(f"the {self.config.history_encoder} encoder needs history_rank")
            h = self.history(history, history_rank)
        else:
            h = self.history(history)
        return self.tower_from(h, search, cats, cont)

    def tower_from(
        self, h: torch.Tensor, search: torch.Tensor, cats: torch.Tensor, cont: torch.Tensor
    ) -> torch.Tensor:
        """The tower over an encoded history h [B, D] and the side inputs -> u [B, H] (the
        sequence trainer encodes every next-second history of a window in one pass and joins
        the side inputs of each prediction here)."""
        s = self.search(search)
        if not self.config.use_history:
            h = torch.zeros_like(h)
        if not self.config.use_search:
            s = torch.zeros_like(s)
        u = self.tower(torch.cat([h, s, self.context(cats, cont)], dim=1))
        if self.config.temperature is not None:
            u = F.normalize(u, dim=1) / self.config.temperature
        return u

    def output_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [*] -> [*, H] output embeddings as scored (normalized when cosine is on)."""
        v = self.item_out(rows)
        return F.normalize(v, dim=-1) if self.config.temperature is not None else v

    def item_vectors(self) -> torch.Tensor:
        """[N, H] output embeddings as scored (row 0 = PAD, never recommended)."""
        v = self.item_out.weight
        return F.normalize(v, dim=1) if self.config.temperature is not None else v
