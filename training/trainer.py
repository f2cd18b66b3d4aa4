"""The epoch loop of every training run: train, validate, log and checkpoint, stop on a signal.

SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption) inside :class:`StopOnSignal` only raises a
flag; the loop looks at it after every step, saves ``last.pth`` there and raises
:class:`utils.errors.Interrupted`, whose one-line message shows the resume command. A second
signal stops at once, leaving the checkpoints of the last finished epoch (every checkpoint is
written atomically, so even SIGKILL leaves them loadable). A second signal within
``REPEAT_SECONDS`` of the first counts as the same request: under ``torchrun`` a Ctrl-C reaches
each worker twice, from the terminal and forwarded by the launcher.

A training script builds two values and hands them to :class:`Trainer`: a
:class:`training.setup.RunSetup` (flags, device, process group, run folder, the run it resumes)
and a :class:`Task` (what differs between the problems: data, model, losses, transforms,
metric). The per-batch loops are :mod:`training.engine`'s; the progress a resume restores is
:mod:`training.run`'s; the run folder's files are :mod:`utils.run_folder`'s.
"""
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from datasets.loader import TensorBatches, count_batches
from inference import run_tta
from training.engine import LossMeter, evaluate, train_one_epoch
from training.optim import Updater
from training.run import TrainState
from utils import distributed
from utils.args import REPO
from utils.distributed import all_reduce_sum
from utils.errors import Interrupted
from utils.runtime import EpochRNG, compile_model, mix_seed, peak_memory_gib, reset_peak_memory, seed_everything


@dataclass
class Task:
    """What a problem trains: everything the loop needs that is not a flag.

    Attributes:
        model: the bare network on the run's device (compiled and wrapped for several
            processes by the trainer).
        train_data, val_data: ``(inputs, targets)`` tensors, on the device or in host memory
            (batches are copied to the device).
        criterion: the training loss; ``eval_criterion`` the validation loss.
        train_transform: ``(x, y, rng) -> (x, y)``, batched augmentation and normalisation.
        eval_transform: ``(x, y) -> (x, y)``, normalisation.
        make_metric: a fresh metric object (``update``/``compute``) for each validation.
        metric_name: the metric's key (``acc``, ``miou``): logged as ``val_<name>``, and the one
            that selects ``best.pth``.
        entries: what every checkpoint carries to rebuild the model
            (:meth:`training.setup.RunSetup.build_model`).
        unit: what a sample is called in messages.
    """

    model: nn.Module
    train_data: tuple
    val_data: tuple
    criterion: nn.Module
    eval_criterion: nn.Module
    train_transform: Callable
    eval_transform: Callable
    make_metric: Callable
    metric_name: str
    entries: dict
    unit: str = "images"


class Trainer:
    """Train ``task`` as ``setup`` says, from the resumed state or from scratch.

    The optimiser, schedule and state are restored from ``setup.resume`` here, before any file
    is written, so a resume that cannot continue is refused with the run folder untouched.
    """

    def __init__(self, setup, task):
        self.setup, self.task = setup, task
        args, ctx = setup.args, setup.ctx
        self.steps_per_epoch = count_batches(len(task.train_data[0]), args.batch_size, ctx.world_size,
                                             drop_small=True)
        self.val_batches = TensorBatches(*task.val_data, args.eval_batch_size, device=setup.device,
                                         rank=ctx.rank, world_size=ctx.world_size)
        self.updater = Updater.from_flags(args, task.model, steps_per_epoch=self.steps_per_epoch,
                                          device=setup.device, amp_dtype=setup.amp_dtype)
        self.state = setup.resume.restore(task.model, self.updater) if setup.resume else TrainState()
        self.key = f"val_{task.metric_name}"

    def fit(self):
        """Train from the state's epoch to ``--epochs``, validating and checkpointing each epoch.

        SIGINT or SIGTERM stops the run after the current step: ``last.pth`` then holds that
        step's state, from which a resume continues exactly.

        Returns:
            ``{"best_val_<name>": ..., "best_epoch": ..., "epochs": ..., "last": last record}``.

        Raises:
            Interrupted: after saving, when a signal stopped the run.
        """
        setup, task, state, args = self.setup, self.task, self.state, self.setup.args
        if state.epoch >= args.epochs:
            print(f"{setup.resume.path} has already trained {state.epoch} of --epochs {args.epochs}: "
                  "nothing to do (raise --epochs to train further)")
            return self._result()
        if setup.ctx.is_main and setup.resume is not None:
            stopped = (f"; epoch {state.epoch + 1} goes on after its step {state.partial['train']['step']}"
                       if state.partial else "")
            changes = setup.resume.changes(vars(args))
            changed = f"; from epoch {state.epoch + 1} on, {', '.join(changes)}" if changes else ""
            print(f"resuming {setup.resume.path}: {state.epoch} of {args.epochs} epochs done{stopped}{changed}",
                  flush=True)
        if setup.ctx.is_main:
            # The flags as every checkpoint records them.
            setup.folder.start(task.entries["args"], resume_epoch=state.epoch if setup.resume else None)
            print(f"training {args.model} on {len(task.train_data[0])} {task.unit} ({args.train_dir}), validating "
                  f"on {len(task.val_data[0])} ({args.val_dir}); {setup.ctx.world_size} x {setup.device.type}, "
                  f"amp {args.amp}{f' (--amp auto: {setup.amp_why})' if setup.amp_why else ''}"
                  f"{', sync-bn' if setup.sync_bn else ''}; output {args.output_dir}", flush=True)
        failed = True
        try:
            result = self._epochs()
            failed = False
            return result
        finally:
            # (the process's end would release it too; a later run in this process needs it now)
            setup.folder.release(failed=failed)

    def _epochs(self):
        """The epochs left, in the run folder this process holds; returns :meth:`fit`'s result."""
        setup, task, state, args = self.setup, self.task, self.state, self.setup.args
        # DDP inside torch.compile (not the reverse) lets gradient all-reduces overlap the backward
        # pass; validation runs the bare model, outside DDP's collectives.
        train_model = distributed.wrap(task.model, setup.device, setup.ctx, sync_bn=setup.sync_bn)
        train_model = compile_model(train_model) if args.compile else train_model
        # With --ema the moving average is what is validated, kept as best.pth and graded.
        val_model = task.model if self.updater.ema is None else self.updater.ema.module
        val_model = compile_model(val_model) if args.compile else val_model
        with StopOnSignal(setup.ctx.distributed) as stop:
            for epoch in range(state.epoch + 1, args.epochs + 1):
                start = time.perf_counter()
                reset_peak_memory(setup.device)
                train = self._train_epoch(train_model, epoch, stop)
                distributed.broadcast_buffers(task.model, setup.ctx)
                if self.updater.ema is not None:
                    distributed.broadcast_buffers(self.updater.ema.module, setup.ctx)
                val = evaluate(val_model, task.eval_criterion, self.val_batches, task.make_metric(),
                               transform=task.eval_transform, device=setup.device, amp_dtype=setup.amp_dtype,
                               tta=run_tta(task.entries["args"]),
                               desc="validate", progress=self._progress)
                self._end_epoch(epoch, train, val, time.perf_counter() - start)
                if epoch < args.epochs and stop():
                    raise self._stopped(stop, f"after epoch {epoch}")
        distributed.barrier()
        if setup.ctx.is_main:
            print(f"best {self.key} {state.best_metric:.4f} at epoch {state.best_epoch}; checkpoints in "
                  f"{setup.folder.path}", flush=True)
        return self._result()

    @property
    def _progress(self):
        return self.setup.args.progress if self.setup.ctx.is_main else False

    def _train_epoch(self, model, epoch, stop):
        """One training pass (the rest of one, after a stop part-way); saves and raises on a stop."""
        setup, args, ctx, partial = self.setup, self.setup.args, self.setup.ctx, self.state.partial
        if ctx.rank:
            # Rank 0 draws dropout from the global RNG state its checkpoints carry; the others
            # from (seed, epoch, rank), so an epoch-boundary resume replays them too.
            seed_everything(mix_seed(args.seed, epoch, ctx.rank))
        rng = EpochRNG(args.seed, epoch, setup.device, ctx.rank)
        batches = TensorBatches(*self.task.train_data, args.batch_size, generator=rng.cpu, drop_small=True,
                                device=setup.device, rank=ctx.rank, world_size=ctx.world_size)
        lr, meter = self.updater.lr, LossMeter(setup.device)
        if partial is not None:  # Resume.check made sure it continues with the numbers it started with
            batches = batches.from_step(partial["train"]["step"])
            lr = partial["train"]["lr"]
            if ctx.is_main:
                # Only rank 0's streams were saved; the sums so far are over every process, and
                # one of them carries them on.
                rng.load_state(partial["rng"])
                meter = LossMeter(setup.device, partial["train"]["loss_sum"], partial["train"]["samples"],
                                  partial["train"]["skipped"])
        train = train_one_epoch(model, self.task.criterion, self.updater, batches,
                                transform=lambda x, y: self.task.train_transform(x, y, rng), device=setup.device,
                                meter=meter, should_stop=stop,
                                desc=f"epoch {epoch}/{args.epochs}", progress=self._progress)
        train["lr"] = lr
        if not train["complete"]:
            self.state.partial = {
                "train": {"step": train["steps"], "lr": lr, "loss_sum": train["loss_sum"], "samples": train["samples"],
                          "skipped": train["skipped"]},
                "rng": rng.state(), "device": setup.device.type}
            if ctx.is_main:
                setup.folder.save_partial(self._checkpoint())
            distributed.barrier()  # torchrun ends every process once one exits: save first
            raise self._stopped(stop, f"in epoch {epoch} after step {train['steps']} of {len(batches)}")
        return train

    def _end_epoch(self, epoch, train, val, seconds):
        """Log the epoch (metrics line, progress line) and write its checkpoints.

        The line counts the training steps skipped for a loss or gradients that were not finite
        (float16 overflow) and the epoch's peak GPU memory (``null`` off CUDA; rank 0's GPU).
        """
        metric = self.task.metric_name
        peak = peak_memory_gib(self.setup.device)
        record = {"epoch": epoch, "lr": train["lr"], "train_loss": train["loss"], "val_loss": val["loss"],
                  self.key: val[metric], **{f"val_{k}": v for k, v in val.items() if k not in ("loss", metric)},
                  "seconds": seconds, "images_per_second": train["images_per_second"],
                  "skipped_steps": train["skipped"], "peak_memory_gib": peak}
        is_best = self.state.end_epoch(record, self.key)
        if self.setup.ctx.is_main:
            self.setup.folder.end_epoch(record, self._checkpoint(), is_best=is_best,
                                        snapshot=epoch in self.setup.args.save_epochs)
            print(f"epoch {epoch}/{self.setup.args.epochs}  train_loss {train['loss']:.4f}  val_loss {val['loss']:.4f}  "
                  f"{self.key} {val[metric]:.4f}{'  (best)' if is_best else ''}  lr {train['lr']:.3g}  "
                  f"{seconds:.1f}s  {train['images_per_second']:.3g} img/s{_extras(peak, train['skipped'])}",
                  flush=True)

    def _checkpoint(self):
        return self.state.checkpoint(self.task.model, self.updater, self.task.entries)

    def _stopped(self, stop, where):
        last = self.setup.folder.path / "last.pth"
        script = REPO / f"{self.setup.problem}_train.py"  # runnable from any working directory
        script = script.name if Path.cwd() == REPO else script
        return Interrupted(f"stopped by {stop.name} {where}; saved {last}; continue with: python3 {script} "
                           f"--resume {last}", stop.signum)

    def _result(self):
        return {f"best_{self.key}": self.state.best_metric, "best_epoch": self.state.best_epoch,
                "epochs": self.state.epoch, "last": self.state.record}


def _extras(peak, skipped):
    """The progress line's tail: peak GPU memory on CUDA, skipped steps when there were any."""
    return (f"  peak {peak:.2f} GiB" if peak is not None else "") + (f"  {skipped} skipped" if skipped else "")


SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_SECONDS = 2.0


class StopOnSignal:
    """A context in which SIGINT and SIGTERM ask for a stop instead of killing the process.

    Calling the object tells whether a stop was asked (by any process, when there are several,
    so that all of them stop after the same step).

    Args:
        distributed: several processes run together; they compare notes every ``every``-th call
            (an all-reduce waits for the GPU, so not every step), the same calls on each of them.
        every: see ``distributed``.
    """

    def __init__(self, distributed=False, every=16):
        self.distributed, self.every, self.calls = distributed, every, 0
        self.signum = None
        self._first = None
        self._previous = {}

    def __enter__(self):
        # Handlers can only be installed from the main thread (tests may call main() elsewhere).
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self._first is None:
            self.signum, self._first = signum, now
        elif now - self._first > REPEAT_SECONDS:
            raise KeyboardInterrupt  # a second request: stop now

    @property
    def name(self):
        """The signal's name, for messages (``SIGINT``, ``SIGTERM``)."""
        return signal.Signals(self.signum or signal.SIGTERM).name

    def __call__(self):
        asked = float(self.signum is not None)
        if self.distributed:
            self.calls += 1
            if self.calls % self.every:
                return False
            asked = all_reduce_sum(torch.tensor(asked)).item()
        if asked and self.signum is None:
            self.signum = signal.SIGTERM  # another process was signalled
        return bool(asked)
