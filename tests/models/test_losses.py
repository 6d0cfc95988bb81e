"""Label-smoothing cross-entropy and batch-hard triplet loss against plain loops."""

import math

import pytest
import torch

from models.engine.losses import batch_hard_triplet_loss, label_smoothing_cross_entropy


def test_label_smoothing_cross_entropy_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.tensor([0, 4, 2, 2, 1, 3])
    eps = 0.1
    target = (1 - eps) * torch.nn.functional.one_hot(labels, 5) + eps / 5
    expected = -(target * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(label_smoothing_cross_entropy(logits, labels, eps).double(), expected)


def reference_triplet(x, labels, margin):
    total = 0.0
    for a in range(len(x)):
        pos = max(float((x[a] - x[p]).norm()) for p in range(len(x)) if labels[p] == labels[a])
        neg = min(float((x[a] - x[n]).norm()) for n in range(len(x)) if labels[n] != labels[a])
        total += max(0.0, pos - neg + margin)
    return total / len(x)


@pytest.mark.parametrize("margin", [0.3, 5.0])
def test_batch_hard_triplet_matches_a_loop(margin):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 7, generator=g, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(3)
    loss = batch_hard_triplet_loss(x, labels, margin)
    assert math.isclose(float(loss), reference_triplet(x, labels, margin), rel_tol=1e-6)


def test_triplet_gradient_is_finite_for_identical_features():
    x = torch.ones(4, 3, requires_grad=True)
    batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(x.grad).all()


def test_triplet_needs_two_identities():
    with pytest.raises(ValueError, match="at least two identities"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"features must be \[B, D\]"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
