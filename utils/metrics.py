"""Metrics accumulated over a whole evaluation set, exactly (never averaged per batch).

With several processes each accumulates its share of the set and ``compute()`` sums the counts
of all of them first, so the result is the one a single process would get.
"""
import torch

from utils.distributed import all_reduce_sum


def _logits(output):
    # Segmenters return {"out": ..., "aux": ...}; classifiers return the logits themselves.
    return output["out"] if isinstance(output, dict) else output


class Accuracy:
    """Top-1 accuracy: correct predictions over all samples seen.

    Counts stay on the device (no synchronisation per batch); :meth:`compute` reads them once.
    """

    def __init__(self):
        self.correct = None
        self.total = 0

    def update(self, output, target):
        """Add a batch of logits (B, C) and integer targets (B,)."""
        correct = (_logits(output).argmax(1) == target).sum()
        self.correct = correct if self.correct is None else self.correct + correct
        self.total += target.numel()

    def compute(self):
        """``{"acc": correct / total}`` over every process."""
        correct = self.correct if self.correct is not None else torch.zeros((), dtype=torch.long)
        counts = all_reduce_sum(torch.stack([correct.long(), torch.tensor(self.total, device=correct.device)]))
        correct, total = counts.tolist()
        if not total:
            raise ValueError("Accuracy.compute() called before any update()")
        return {"acc": correct / total}


def confusion_matrix(pred, target, num_classes):
    """A (num_classes, num_classes) int64 matrix: rows are the truth, columns the prediction."""
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def iou_from_confusion(matrix, scored):
    """Per-class IoU and mIoU from a confusion matrix, by the course's definition.

    IoU_i = TP / (TP + FP + FN) with every count pooled over all images. Only classes
    ``0..scored-1`` are averaged, but the others still count: a pixel of class i predicted as
    Unknown is a false negative of i, and a class predicted on an Unknown pixel a false positive.
    A class absent from both truth and prediction has no IoU (``None``) and is left out of the mean
    (the course's scorer would print nan).

    Returns:
        ``(ious, miou)``: a list of ``scored`` floats or ``None``, and their mean over the others.
    """
    matrix = matrix.double()
    tp = matrix.diagonal()
    union = matrix.sum(0) + matrix.sum(1) - tp
    ious = [None if union[i] == 0 else (tp[i] / union[i]).item() for i in range(scored)]
    present = [v for v in ious if v is not None]
    return ious, (sum(present) / len(present) if present else float("nan"))


class MeanIoU:
    """Segmentation mIoU from one confusion matrix accumulated over every pixel of every image.

    Args:
        num_classes: classes in the masks (7: six land covers and Unknown).
        scored: the first ``scored`` classes are averaged (6).
    """

    def __init__(self, num_classes, scored):
        self.num_classes = num_classes
        self.scored = scored
        self.matrix = None

    def update(self, output, target):
        """Add a batch of logits (B, C, H, W) and masks (B, H, W)."""
        m = confusion_matrix(_logits(output).argmax(1), target, self.num_classes)
        self.matrix = m if self.matrix is None else self.matrix + m

    def compute(self):
        """``{"miou": ..., "iou_<i>": ...}`` over every process (``None`` for a class absent from both sides)."""
        matrix = self.matrix if self.matrix is not None else torch.zeros(
            (self.num_classes,) * 2, dtype=torch.long)
        matrix = all_reduce_sum(matrix)
        if not matrix.sum():
            raise ValueError("MeanIoU.compute() called before any update()")
        ious, miou = iou_from_confusion(matrix.cpu(), self.scored)
        return {"miou": miou, **{f"iou_{i}": v for i, v in enumerate(ious)}}
