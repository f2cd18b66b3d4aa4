"""Where a training run stands: its progress (:class:`TrainState`) and the run it continues
(:class:`Resume`). What a checkpoint holds is declared in :mod:`utils.checkpoint`, the files of a run
folder in :mod:`utils.run_folder`.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from config import flags
from utils.checkpoint import load_checkpoint, unwrap
from utils.errors import UserError
from utils.run_folder import LAST


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
            streams, "device"}`` (the flags it continues only with are the run's: :meth:`Resume.check`).
    """

    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int | None = None
    record: dict | None = None
    partial: dict | None = None

    def end_epoch(self, record, metric):
        """Record a finished epoch whose validation ``metric`` is ``record[metric]``; True when it
        is the best so far (the first of equals stays the best)."""
        self.epoch, self.record, self.partial = record["epoch"], record, None
        if record[metric] > self.best_metric:
            self.best_metric, self.best_epoch = record[metric], record["epoch"]
            return True
        return False

    def checkpoint(self, model, updater, entries):
        """The checkpoint dict of this state: the model's ``entries``
        (:func:`utils.checkpoint.model_entries`), its weights, the updater's state and the progress."""
        ckpt = {**entries, "model": _cpu_state(unwrap(model).state_dict()),
                **updater.state_dict(), "epoch": self.epoch, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "metrics": self.record, "rng": rng_state()}
        if self.partial is not None:
            ckpt.update(step=self.partial["train"]["step"], partial=self.partial)
        return ckpt


def rng_state():
    """The global torch RNG states (CPU and every CUDA device), for the checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what :func:`rng_state` saved (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _cpu_state(state_dict):
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state_dict.items()}


class Resume:
    """A run continued from its ``last.pth``: loaded and checked once, its flags handed to the
    resolution (:meth:`flags`), what a resume cannot change refused (:meth:`check_kept`, :meth:`check`),
    what it changes said (:meth:`changes`), and the state restored into the new run's model and
    updater (:meth:`restore`).

    Args:
        path: the checkpoint.
        ckpt: its dict.
    """

    def __init__(self, path, ckpt):
        self.path, self.ckpt = Path(path), ckpt

    @classmethod
    def load(cls, path, problem):
        """Load ``--resume`` (a ``last.pth``, or the run folder holding one).

        Raises:
            UserError: no such file; not a checkpoint of ``problem``; weights only (``best.pth``, a
                snapshot).
        """
        path = Path(path).absolute()
        if path.is_dir():
            path = path / LAST
        ckpt = load_checkpoint(path, problem=problem)
        if "optimizer" not in ckpt:
            raise UserError(f"--resume {path}: holds weights only (best.pth and the epoch_NNN.pth snapshots keep no "
                            f"optimiser state); resume from {path.parent / LAST}")
        return cls(path, ckpt)

    @property
    def epoch(self):
        """The epochs the run has finished."""
        return self.ckpt["epoch"]

    @property
    def partial(self):
        """What was done of the epoch stopped part-way, or ``None``."""
        return self.ckpt.get("partial")

    def flags(self, typed):
        """The run's flags, as the layer under those ``typed`` anew (:func:`config.flags.earlier_run`);
        the run goes on in the folder that holds the checkpoint, wherever it has been moved."""
        return {**flags.earlier_run(self.ckpt["args"], typed, self.ckpt["problem"]), "output_dir": self.path.parent}

    def check_kept(self, values):
        """Refuse another value of a flag the run keeps (:attr:`config.flags.Flag.kept`: its network,
        its optimiser's kind and groups, its start), which a resume would record and not apply.

        Raises:
            UserError: naming the first such flag, the run's value and why it stays.
        """
        saved, now = self.ckpt["args"], flags.to_json(values)
        for flag in flags.FLAGS:
            name = flag.name
            if flag.kept is None or name not in saved or name not in now or now[name] == saved[name]:
                continue
            if not flags.acts_on(name, values):
                continue  # a flag of other models, or out of effect: it does nothing to this run
            typed = flags.as_typed(name, now[name])
            raise UserError(f"{typed}: {self.path} is a run of {flags.as_typed(name, saved[name])}, which a resume "
                            f"keeps ({flag.kept}); start a new run for it")

    def changes(self, values):
        """What the resumed run changes of the run's numbers at this epoch boundary, as ``--flag value
        (the run had value)`` texts: every flag the run compares (:data:`config.flags.COMPARED`) that
        acts on its model and differs. The updater and the data take them from the next epoch on."""
        saved, now = self.ckpt["args"], flags.to_json(values)
        return [f"{flags.as_typed(name, now[name])} (the run had {flags.as_typed(name, saved[name])})"
                for name in now if name in flags.COMPARED and name in saved and now[name] != saved[name]
                and flags.acts_on(name, values)]

    def check(self, values, device):
        """Refuse ``--epochs`` below the epochs done, and what would change an epoch stopped part-way:
        its remaining steps are those of the run only with the same numbers (every flag but :data:`config.flags.FREE_ON_RESUME`; ``--epochs``
        only where the schedule depends on it) on the same kind of device.

        Raises:
            UserError: naming the first such flag (or the device), its saved and its new value.
        """
        if values["epochs"] < self.epoch:
            raise UserError(f"--epochs {values['epochs']}: {self.path} has already trained {self.epoch} epochs; "
                            f"give --epochs {self.epoch} or more (a run is not shortened by a resume)")
        if self.partial is None:
            return
        saved, now = self.ckpt["args"], flags.to_json(values)
        for key in sorted(set(now) & set(saved) - flags.FREE_ON_RESUME):
            if key == "epochs" and saved.get("sched") == "constant":
                continue  # a constant learning rate does not depend on the run's length
            if key == "amp" and saved[key] == "auto":
                continue  # saved before runs recorded the precision auto chose: this run's choice stands
            if now[key] != saved[key]:
                raise self._refusal(key, saved[key], now[key])
        if self.partial["device"] != device.type:
            raise self._refusal("device", self.partial["device"], device.type)

    def _refusal(self, key, saved, new):
        return UserError(f"--resume: the checkpoint stopped part-way through epoch {self.epoch + 1} with {key} "
                         f"{saved}; it continues only with the same {key} (this run has {new}); change it at an "
                         "epoch boundary")

    def restore(self, model, updater):
        """The weights into ``model``, the optimiser, schedule, scaler and moving average into
        ``updater``, the global RNG states into this process; returns the run's
        :class:`TrainState`."""
        ckpt = self.ckpt
        unwrap(model).load_state_dict(ckpt["model"])
        updater.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"])
        return TrainState(epoch=ckpt["epoch"], best_metric=ckpt["best_metric"], best_epoch=ckpt["best_epoch"],
                          record=ckpt["metrics"], partial=ckpt.get("partial"))
