"""What each model family's outputs are trained with and evaluated on.

An objective turns a training forward's outputs into named loss terms and an
evaluation forward's outputs into named feature sets [B, D]. Under DDP the
triplet terms mine over the whole global batch (features gathered from every
rank, with gradients), so that a run does not depend on how its batch is split
over processes.
"""

from __future__ import annotations

import torch

from .distributed import gather_for_loss
from .losses import batch_hard_triplet_loss, label_smoothing_cross_entropy


def _global_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    return batch_hard_triplet_loss(gather_for_loss(features), gather_for_loss(labels), margin)


class _Objective:
    """The loss weights every objective takes: label smoothing of the cross-entropy, the triplet
    margin, and the weights of the two terms."""

    def __init__(self, label_smoothing: float = 0.1, margin: float = 0.3, ce_weight: float = 1.0,
                 triplet_weight: float = 1.0) -> None:
        self.label_smoothing = label_smoothing
        self.margin = margin
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight


class BNNeckObjective(_Objective):
    """RGA-Net's convention: training returns (feat_, feat, logits), evaluation (feat_, feat).

    Loss: `ce_weight` x label-smoothing cross-entropy on the logits of the BN
    feature + `triplet_weight` x batch-hard triplet on the pooled feature `feat_`.
    """

    feature_names = ("feat_", "feat")

    def losses(self, outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not (isinstance(outputs, tuple) and len(outputs) == 3):
            raise TypeError("a BNNeck model's training forward must return (feat_, feat, logits)")
        pooled, _, logits = outputs
        terms = {"ce": self.ce_weight * label_smoothing_cross_entropy(logits, labels, self.label_smoothing)}
        if self.triplet_weight:
            terms["triplet"] = self.triplet_weight * _global_triplet(pooled, labels, self.margin)
        return terms

    def features(self, outputs) -> dict[str, torch.Tensor]:
        if not (isinstance(outputs, tuple) and len(outputs) == 2):
            raise TypeError("a BNNeck model's evaluation forward must return (feat_, feat)")
        return dict(zip(self.feature_names, outputs))


class HACNNObjective(_Objective):
    """HA-CNN's convention (torchreid): training returns (logits_global, logits_local) with softmax
    loss, and ((logits_global, logits_local), (x_global, x_local)) with triplet loss (a flat 4-tuple
    is taken too); evaluation returns one feature [B, 1024].

    Loss: cross-entropy on both logits (+ triplet on both features), summed.
    """

    feature_names = ("feat",)

    def losses(self, outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        # torchreid's HACNN(loss="triplet") nests them: ((logits_global, logits_local), (x_global, x_local)).
        if isinstance(outputs, tuple) and len(outputs) == 2 and all(isinstance(o, tuple) for o in outputs):
            outputs = (*outputs[0], *outputs[1])
        if not (isinstance(outputs, tuple) and len(outputs) in (2, 4)
                and all(isinstance(o, torch.Tensor) for o in outputs)):
            raise TypeError("an HA-CNN training forward must return (logits_global, logits_local[, x_global, x_local]) "
                            "or ((logits_global, logits_local), (x_global, x_local))")
        terms = {"ce": self.ce_weight * sum(label_smoothing_cross_entropy(logits, labels, self.label_smoothing)
                                            for logits in outputs[:2])}
        if len(outputs) == 4 and self.triplet_weight:
            terms["triplet"] = self.triplet_weight * sum(_global_triplet(x, labels, self.margin)
                                                         for x in outputs[2:])
        return terms

    def features(self, outputs) -> dict[str, torch.Tensor]:
        if not isinstance(outputs, torch.Tensor):
            raise TypeError("an HA-CNN evaluation forward must return one feature tensor")
        return {"feat": outputs}
