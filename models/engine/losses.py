"""Re-id losses: label-smoothing cross-entropy and batch-hard triplet (docs/reid.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothing_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Mean cross-entropy of `logits` [B, C] against targets `(1 - eps) onehot(labels) + eps / C`."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=epsilon)


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """[B, B] Euclidean distances between the rows of `x` [B, D], squared distances clamped before the sqrt."""
    squared = x.square().sum(1)
    dist = torch.addmm(squared[:, None] + squared[None, :], x, x.t(), alpha=-2.0)
    # The clamp keeps the gradient of sqrt finite on the diagonal and for duplicates.
    return dist.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Mean over anchors of max(0, d(a, hardest positive) - d(a, hardest negative) + margin).

    `features` [B, D] (not normalised), `labels` [B]; Euclidean distance. Every
    anchor needs a positive (another picture of its identity, as P x K batches
    give) and a negative.
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [B, D] and labels [B], got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    dist = pairwise_euclidean(features.float())
    same = labels[:, None] == labels[None, :]
    if not bool(same.logical_not().any(1).all()):
        raise ValueError("batch_hard_triplet_loss: every anchor needs a negative (at least two identities per batch)")
    hardest_positive = dist.masked_fill(~same, float("-inf")).amax(1)
    hardest_negative = dist.masked_fill(same, float("inf")).amin(1)
    return F.margin_ranking_loss(hardest_negative, hardest_positive, torch.ones_like(hardest_positive), margin=margin)
