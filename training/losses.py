"""Segmentation losses over the model's ``{"out", "aux"}`` outputs."""
import torch
import torch.nn.functional as F
from torch import nn


def focal_loss(logits, target, *, alpha, gamma, ignore_index=-100, weight=None):
    """Per-pixel focal loss (Lin et al., ICCV 2017), averaged over the pixels not ignored.

    ``alpha * (1 - p_t) ** gamma * CE`` at every pixel; with ``gamma = 0`` and ``alpha = 1`` it is
    the cross-entropy. (The reference code applied the focal term to the batch-mean
    cross-entropy instead, which is a rescaled cross-entropy, not a focal loss.) With class
    ``weight`` s each pixel counts ``weight[its class]`` times, and the mean is over those
    weights, as ``F.cross_entropy`` weighs.
    """
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    pt = (-ce).exp()
    loss = alpha * (1.0 - pt).pow(gamma) * ce
    if weight is None:
        return loss.sum() / valid.sum().clamp(min=1)
    w = weight[torch.where(valid, target, 0)] * valid
    return (loss * w).sum() / w.sum().clamp(min=torch.finfo(w.dtype).tiny)


class SegmentationLoss(nn.Module):
    """Loss on the main output plus ``aux_weight`` times the loss on the auxiliary one.

    Args:
        kind: ``ce`` or ``focal``.
        alpha, gamma: the focal loss's parameters.
        ignore_index: a class whose pixels are left out (Unknown), or ``None``.
        aux_weight: weight of the ``aux`` output's loss (ignored when the model has none; 0 still
            gives the auxiliary head zero gradients, as DistributedDataParallel needs).
        class_weights: a weight per class (each pixel counts its class's weight), or ``None``.
    """

    def __init__(self, kind="ce", *, alpha=1.0, gamma=2.0, ignore_index=None, aux_weight=1.0, class_weights=None):
        super().__init__()
        self.kind, self.alpha, self.gamma, self.aux_weight = kind, alpha, gamma, aux_weight
        self.ignore_index = -100 if ignore_index is None else ignore_index
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)

    def _one(self, logits, target):
        if self.kind == "focal":
            return focal_loss(logits.float(), target, alpha=self.alpha, gamma=self.gamma,
                              ignore_index=self.ignore_index, weight=self.class_weights)
        return F.cross_entropy(logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index)

    def forward(self, output, target):
        target = target.long()
        loss = self._one(output["out"], target)
        if output.get("aux") is not None:
            # At weight 0 too: DistributedDataParallel needs a gradient for every parameter each step,
            # and a head the loss left out would get none ("Expected to have finished reduction in the
            # prior iteration"). Times 0 it gets zeros and every other gradient is unchanged, for the
            # cost of the head's backward; the model and its checkpoints stay the same whatever
            # --aux-weight is (building it without the head would change them, and a resume with
            # another weight would not load; find_unused_parameters would walk the graph every step).
            loss = loss + self.aux_weight * self._one(output["aux"], target)
        return loss
