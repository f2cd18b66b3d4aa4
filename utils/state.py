"""Where a training run stands: what a checkpoint saves and a resume restores.

A checkpoint is one plain dict (format :data:`utils.checkpoint.FORMAT`):

- to rebuild the model: ``problem``, ``arch``, ``model_kwargs``, ``num_classes``, ``mean``, ``std``
  and the run's ``args`` (the task's ``meta``), and the weights, ``model``;
- to continue the run: ``optimizer``, ``scheduler``, ``scaler``, ``ema`` (the moving average of
  the weights, or ``None``; :class:`utils.optim.Updater`),
  the global RNG states ``rng``, and this module's :class:`TrainState`: ``epoch`` (finished),
  ``best_metric``, ``best_epoch``, ``metrics`` (the last epoch's line), and for an epoch stopped
  part-way ``step`` and ``partial`` (the steps done, the loss sums so far, the epoch's
  augmentation streams, and the device, batch size and seed they continue only with).

``best.pth`` and the ``epoch_NNN.pth`` snapshots keep the first group and the progress entries
(``epoch``, ``best_metric``, ``best_epoch``, ``metrics``), not what only a resume needs
(:data:`RESUME_ONLY`): :func:`inference_checkpoint`. A run with ``--ema`` validates the average, so
there ``model`` is the average (``"weights": "ema"``).
"""
import math
from dataclasses import dataclass

import torch

from utils.checkpoint import FORMAT, unwrap
from utils.errors import UserError
from utils.runtime import rng_state, set_rng_state

# What only a resume reads: the optimiser's slots alone are as large as the weights, or twice.
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "ema", "rng", "step", "partial")


@dataclass
class TrainState:
    """The progress of a run, beside its weights and optimiser.

    Attributes:
        epoch: epochs finished.
        best_metric: the best validation metric so far (``-inf`` before any).
        best_epoch: its epoch, or ``None``.
        record: the last finished epoch's metrics line, or ``None``.
        partial: the part of epoch ``epoch + 1`` done before a stop, or ``None``:
            ``{"train": {"step", "lr", "loss_sum", "samples", "skipped"}, "rng": the epoch's augmentation
            streams, "device", "batch_size", "seed"}``.
    """

    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int | None = None
    record: dict | None = None
    partial: dict | None = None

    @classmethod
    def resume(cls, ckpt, model, updater):
        """Restore a run from ``ckpt``: the weights into ``model``, the optimiser, schedule and
        scaler into ``updater``, the global RNG states; returns the run's state."""
        unwrap(model).load_state_dict(ckpt["model"])
        updater.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"])
        return cls(epoch=ckpt["epoch"], best_metric=ckpt["best_metric"], best_epoch=ckpt.get("best_epoch"),
                   record=ckpt.get("metrics"), partial=ckpt.get("partial"))

    def end_epoch(self, record, metric):
        """Record a finished epoch whose validation ``metric`` is ``record[metric]``; True when it
        is the best so far (the first of equals stays the best)."""
        self.epoch, self.record, self.partial = record["epoch"], record, None
        if record[metric] > self.best_metric:
            self.best_metric, self.best_epoch = record[metric], record["epoch"]
            return True
        return False

    def checkpoint(self, model, updater, meta):
        """The checkpoint dict of this state (see the module docstring)."""
        ckpt = {**meta, "format": FORMAT, "model": _cpu_state(unwrap(model).state_dict()),
                **updater.state_dict(), "epoch": self.epoch, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "metrics": self.record, "rng": rng_state()}
        if self.partial is not None:
            ckpt.update(step=self.partial["train"]["step"], partial=self.partial)
        return ckpt


def inference_checkpoint(ckpt):
    """``ckpt`` without :data:`RESUME_ONLY`: what inference and the report figures read, with the
    weights that were validated (the moving average, when the run keeps one)."""
    weights = {k: v for k, v in ckpt.items() if k not in RESUME_ONLY}
    if ckpt.get("ema") is not None:
        weights.update(model=ckpt["ema"], weights="ema")
    return weights


def _cpu_state(state_dict):
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state_dict.items()}


def mid_epoch_refusal(epoch, key, saved, new):
    """The one-line error for resuming an epoch stopped part-way with another ``key`` (a flag,
    or the device): its remaining steps would not be those of the run."""
    return UserError(f"--resume: the checkpoint stopped part-way through epoch {epoch} with {key} {saved}; "
                     f"it continues only with the same {key} (this run has {new}); change it at an "
                     "epoch boundary")
