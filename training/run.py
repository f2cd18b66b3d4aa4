"""A training run on disk: its folder, its checkpoints, and where it stands (what a resume restores).

The one description of the layout (the README points here). A run folder holds:

- ``args.json``: the run's flags, written at its start;
- ``metrics.jsonl``: one JSON line per finished epoch;
- ``last.pth``: the whole state of the latest epoch, or of an epoch stopped part-way (what
  ``--resume`` takes);
- ``best.pth``: the weights of the best epoch and what inference needs, no optimiser (the file to
  grade with and publish);
- ``epoch_NNN.pth``: snapshots of chosen epochs (:data:`SNAPSHOT`), as ``best.pth``, for the
  report's figures.

Each epoch writes its metrics line first and ``last.pth`` last, every file atomically, so a crash
at any moment leaves loadable checkpoints, and a resume drops the lines it will redo.

A checkpoint is one plain dict (format :data:`utils.checkpoint.FORMAT`):

- to rebuild the model: ``problem``, ``arch``, ``model_kwargs``, ``num_classes``, ``mean``, ``std``
  and the run's ``args`` (the task's ``meta``), and the weights, ``model``;
- to continue the run: ``optimizer``, ``scheduler``, ``scaler``, ``ema`` (the moving average of
  the weights, or ``None``; :class:`training.optim.Updater`), the global RNG states ``rng``, and
  :class:`TrainState`: ``epoch`` (finished), ``best_metric``, ``best_epoch``, ``metrics`` (the
  last epoch's line), and for an epoch stopped part-way ``step`` and ``partial`` (the steps done,
  the loss sums so far, the epoch's augmentation streams, and the device, batch size and seed
  they continue only with).

``best.pth`` and the snapshots keep the first group and the progress entries (``epoch``,
``best_metric``, ``best_epoch``, ``metrics``), not what only a resume needs (:data:`RESUME_ONLY`):
:func:`inference_checkpoint`. A run with ``--ema`` validates the average, so there ``model`` is
the average (``"weights": "ema"``).
"""
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.checkpoint import FORMAT, save_checkpoint, unwrap
from utils.errors import UserError
from utils.io import append_jsonl, atomic_write, check_writable, write_json
from utils.runtime import rng_state, set_rng_state

RUN_FILES = ("args.json", "metrics.jsonl", "best.pth", "last.pth")
# The snapshots' file names: epoch_001.pth, ...; SNAPSHOT_RE reads the epoch back.
SNAPSHOT = "epoch_{:03d}.pth"
SNAPSHOT_RE = re.compile(r"epoch_(\d+)\.pth")

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


class RunFolder:
    """The output folder of one training run.

    Args:
        path: the folder (created by :meth:`start`, not before).
        resume_epoch: the epoch the run resumes after, or ``None`` for a fresh run.
        overwrite: allow a fresh run to replace the files of an earlier run there.
        check: refuse an unwritable folder, or one holding another run, now (False on the processes
            that do not write it: under torchrun on several machines the path may not exist there).
    """

    def __init__(self, path, *, resume_epoch=None, overwrite=False, check=True):
        self.path = Path(path)
        self.resume_epoch = resume_epoch
        if not check:
            return
        check_writable(self.path, "--output-dir", folder=True)
        if resume_epoch is None and not overwrite and (self.path / "last.pth").exists():
            raise UserError(f"--output-dir {self.path} already holds a run; pass --resume "
                            f"{self.path / 'last.pth'} to continue it, --overwrite to replace it, "
                            "or another --output-dir")

    def start(self, args_dict):
        """Create the folder, write ``args.json``, and clear what this run will write anew."""
        self.path.mkdir(parents=True, exist_ok=True)
        metrics = self.path / "metrics.jsonl"
        if self.resume_epoch is None:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            for snapshot in self.path.glob("epoch_*.pth"):
                snapshot.unlink()
        elif metrics.exists():
            # Lines after the checkpoint's epoch were written by a run that died before its
            # last.pth: those epochs run again, so their old lines go.
            kept = [line for line in metrics.read_text().splitlines() if _epoch_of(line) <= self.resume_epoch]
            with atomic_write(metrics) as f:
                f.write("".join(line + "\n" for line in kept))
        write_json(self.path / "args.json", args_dict)

    def end_epoch(self, record, checkpoint, *, is_best, snapshot):
        """Log one epoch and write its checkpoints (metrics line, best, snapshot, then last).

        ``best.pth`` and the snapshot keep what inference needs, weights included, not the
        optimiser (:func:`inference_checkpoint`): graded and published, best.pth need not carry
        slots that double (SGD with momentum) or triple (AdamW) a file. When the epoch is both, the
        snapshot is a second name of ``best.pth`` (a hard link, renamed into place) rather than a
        second write.
        """
        append_jsonl(self.path / "metrics.jsonl", record)
        best, snap = self.path / "best.pth", self.path / SNAPSHOT.format(record['epoch'])
        weights = inference_checkpoint(checkpoint) if is_best or snapshot else None
        if is_best:
            save_checkpoint(weights, best)
        if snapshot and not (is_best and _link_replace(best, snap)):
            save_checkpoint(weights, snap)
        save_checkpoint(checkpoint, self.path / "last.pth")

    def save_partial(self, checkpoint):
        """Write ``last.pth`` of an epoch stopped part-way (no metrics line, best or snapshot)."""
        save_checkpoint(checkpoint, self.path / "last.pth")


def _epoch_of(line):
    """The epoch of a metrics line; infinity for a line torn by a kill during its write."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _link_replace(src, dst):
    """Atomically make ``dst`` another name of ``src``; False where hard links are unsupported."""
    tmp = dst.with_name(f".{dst.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
