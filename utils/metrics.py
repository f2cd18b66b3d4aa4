"""Metrics accumulated over a whole evaluation set, exactly (never averaged per batch)."""
import torch


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
        """``{"acc": correct / total}``."""
        if not self.total:
            raise ValueError("Accuracy.compute() called before any update()")
        return {"acc": self.correct.item() / self.total}
