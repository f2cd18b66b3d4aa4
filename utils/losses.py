"""Segmentation losses over the model's ``{"out", "aux"}`` outputs."""
import torch.nn.functional as F
from torch import nn


def focal_loss(logits, target, *, alpha, gamma, ignore_index=-100):
    """Per-pixel focal loss (Lin et al., ICCV 2017), averaged over the pixels not ignored.

    ``alpha * (1 - p_t) ** gamma * CE`` at every pixel; with ``gamma = 0`` and ``alpha = 1`` it is
    the cross-entropy. (The reference code applied the focal term to the batch-mean
    cross-entropy instead, which is a rescaled cross-entropy, not a focal loss.)
    """
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    pt = (-ce).exp()
    loss = alpha * (1.0 - pt).pow(gamma) * ce
    return loss.sum() / valid.sum().clamp(min=1)


class SegmentationLoss(nn.Module):
    """Loss on the main output plus ``aux_weight`` times the loss on the auxiliary one.

    Args:
        kind: ``ce`` or ``focal``.
        alpha, gamma: the focal loss's parameters.
        ignore_index: a class whose pixels are left out (Unknown), or ``None``.
        aux_weight: weight of the ``aux`` output's loss (ignored when the model has none).
    """

    def __init__(self, kind="ce", *, alpha=1.0, gamma=2.0, ignore_index=None, aux_weight=1.0):
        super().__init__()
        self.kind, self.alpha, self.gamma, self.aux_weight = kind, alpha, gamma, aux_weight
        self.ignore_index = -100 if ignore_index is None else ignore_index

    def _one(self, logits, target):
        if self.kind == "focal":
            return focal_loss(logits.float(), target, alpha=self.alpha, gamma=self.gamma,
                              ignore_index=self.ignore_index)
        return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)

    def forward(self, output, target):
        target = target.long()
        loss = self._one(output["out"], target)
        if self.aux_weight and output.get("aux") is not None:
            loss = loss + self.aux_weight * self._one(output["aux"], target)
        return loss
