"""Sampled softmax with the logQ correction (paper §3.1), and the full softmax reference.

K negative classes are drawn from a background distribution q ∝ popularity^α (shared by the
batch). Sampling biases the softmax towards what q favours; subtracting log(K·q_j) from each
sampled logit turns the sum over the sample into an importance-weighted estimate of the
partition function over the other classes. Negatives that happen to equal the example's label
("accidental hits") are masked out, and the true class enters the denominator once, uncorrected,
so the loss converges to the full softmax as K grows even when K·q_label > 1 (small corpora).

Shapes: B batch, H vector dim, K sampled negatives, N classes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class NegativeSampler:
    """Draws K classes from q ∝ (count + 1)^α over rows 1..N-1 (row 0 is PAD)."""

    def __init__(self, counts: torch.Tensor, alpha: float = 0.75, seed: int = 0) -> None:
        if counts.dim() != 1 or counts.numel() < 2:
            raise ValueError("counts must be a 1-D tensor over all rows including PAD")
        weights = (counts.double() + 1.0).pow(alpha)
        weights[0] = 0.0
        self.q = (weights / weights.sum()).float()  # [N]
        self.log_q = torch.log(self.q.clamp(min=1e-12))  # [N]
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, k: int) -> torch.Tensor:
        """[K] sampled class rows (with replacement)."""
        return torch.multinomial(self.q, k, replacement=True, generator=self.generator)


def sampled_softmax_loss(
    user: torch.Tensor,
    labels: torch.Tensor,
    item_out: Callable[[torch.Tensor], torch.Tensor],
    negatives: torch.Tensor,
    log_q: torch.Tensor | None,
    remove_accidental_hits: bool = True,
) -> torch.Tensor:
    """Mean cross-entropy of the true class against K shared negatives.

    Args:
        user: [B, H] user vectors.
        labels: [B] true class rows.
        item_out: rows -> output vectors (an embedding lookup; sparse gradients flow into the
            rows used).
        negatives: [K] sampled rows.
        log_q: [N] log proposal probabilities for the correction, or None for no correction.
        remove_accidental_hits: mask negatives equal to the label.
    """
    pos_v = item_out(labels)  # [B, H]
    neg_v = item_out(negatives)  # [K, H]
    pos_logit = (user * pos_v).sum(dim=1, keepdim=True)  # [B, 1]
    neg_logit = user @ neg_v.T  # [B, K]
    if log_q is not None:
        k = float(negatives.numel())
        neg_logit = neg_logit - (log_q[negatives] + torch.log(torch.tensor(k))).unsqueeze(0)
    if remove_accidental_hits:
        hit = labels.unsqueeze(1) == negatives.unsqueeze(0)  # [B, K]
        neg_logit = neg_logit.masked_fill(hit, float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)  # [B, 1 + K]
    target = torch.zeros(user.shape[0], dtype=torch.long, device=user.device)
    return F.cross_entropy(logits, target)


def full_softmax_loss(
    user: torch.Tensor, labels: torch.Tensor, items: torch.Tensor
) -> torch.Tensor:
    """Exact softmax over all N classes (PAD row 0 excluded); the reference for small corpora.

    ``items`` is the [N, H] output matrix as scored."""
    logits = user @ items.T  # [B, N]
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, labels)
