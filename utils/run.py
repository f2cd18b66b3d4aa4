"""A training run: its output folder, and the epoch loop with validation and checkpoints.

A run folder holds ``args.json``, ``metrics.jsonl`` (one JSON line per epoch), ``last.pth``
(every epoch), ``best.pth`` (best validation metric) and ``epoch_NNN.pth`` snapshots. Each
epoch writes its metrics line first and ``last.pth`` last, every file atomically, so a crash at
any moment leaves loadable checkpoints and a resume that drops the lines it will redo.
"""
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from models import get_model, model_options
from utils.args import REPO, check_positive, default_save_epochs, fill_recipe
from utils import distributed
from utils.checkpoint import load_checkpoint, save_checkpoint, unwrap
from utils.engine import evaluate, train_one_epoch
from utils.errors import Interrupted, UserError
from utils.interrupt import StopOnSignal
from utils.io import append_jsonl, atomic_write, check_writable, write_json
from utils.optim import build_optimizer, build_scheduler
from utils.runtime import (EpochRNG, mix_seed, place_model, resolve_amp, resolve_device, rng_state,
                           seed_everything, set_rng_state)

RUN_FILES = ("args.json", "metrics.jsonl", "best.pth", "last.pth")
# Snapshots feed the report's figures, not a resume: they keep the weights, not the optimiser.
RESUME_ONLY = ("optimizer", "scheduler", "scaler")


def resolve_run_args(args, *, problem, recipes, defaults):
    """Complete a training script's flags: the user's, then the resumed run's, then the recipe's.

    Loads ``--resume`` (refusing another problem's or another model's checkpoint), fills every
    flag left at ``None`` from the checkpoint's args, the script's ``defaults`` and the model's
    recipe, and checks the numbers.

    Args:
        args: the parsed flags (changed in place).
        problem: ``"p1"`` or ``"p2"``.
        recipes: ``{model: {flag: value}}``, the reference recipes.
        defaults: ``{flag: value}`` for flags that do not depend on the model.

    Returns:
        The resumed checkpoint, or ``None``.
    """
    ckpt = None
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, problem=problem)
        if args.model is not None and args.model != ckpt["arch"]:
            raise UserError(f"--resume {args.resume}: a checkpoint of {ckpt['arch']}, "
                            f"not of --model {args.model}")
        # A new --epochs means new default snapshots, not the old run's.
        skip = {"resume", "overwrite"} | ({"save_epochs"} if args.epochs is not None else set())
        for key, value in ckpt["args"].items():
            if key in skip or getattr(args, key, None) is not None:
                continue
            is_path = isinstance(value, str) and key.endswith(("_dir", "_file"))
            setattr(args, key, Path(value) if is_path else value)
    fill_recipe(args, defaults)
    fill_recipe(args, recipes[args.model])
    if args.output_dir is None:
        args.output_dir = REPO / "runs" / f"{problem}_{args.model}"
    check_positive(args, "epochs", "batch_size", "eval_batch_size", "lr")
    if args.save_epochs is None:
        args.save_epochs = default_save_epochs(args.epochs)
    bad = [e for e in args.save_epochs if not 1 <= e <= args.epochs]
    if bad:
        raise UserError(f"--save-epochs {bad[0]}: not an epoch of this run (1 to {args.epochs})")
    return ckpt


def prepare_run(args, ckpt):
    """Where a training run computes and writes: device, autocast dtype, process group, run folder.

    Args:
        args: the resolved flags.
        ckpt: the resumed checkpoint, or ``None``.

    Returns:
        ``(device, amp_dtype, ctx, run)``: the ``torch.device``, the autocast dtype (or ``None``),
        this process's :class:`utils.distributed.Context` and the :class:`RunFolder`.
    """
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    ctx = distributed.init(device)
    distributed.check_batch_share(args.batch_size, ctx)
    run = RunFolder(args.output_dir, resume_epoch=ckpt["epoch"] if ckpt else None, overwrite=args.overwrite)
    return device, amp_dtype, ctx, run


def build_model(args, *, num_classes, device, resumed):
    """The run's ``--model`` on ``device``, with the model-specific flags it takes.

    Pretrained weights are fetched only for a fresh run: a resumed one loads its own.

    Returns:
        ``(model, options)``; ``options`` is what the checkpoint records to rebuild it.
    """
    options = model_options(args.model, args)
    model = get_model(args.model, num_classes=num_classes, pretrained=args.pretrained and not resumed,
                      pretrained_file=None if resumed else args.pretrained_file, **options)
    return place_model(model, device), options


def build_optimization(args, model, *, steps_per_epoch, amp_dtype, device, ckpt=None):
    """The optimiser, per-iteration schedule and gradient scaler of a run, resumed from ``ckpt``.

    Resuming also restores the model's weights and the global RNG states.

    Returns:
        ``(optimizer, scheduler, scaler, start_epoch, best_metric, best_epoch)``.
    """
    optimizer = build_optimizer(args.opt, model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                momentum=args.momentum, fused=device.type == "cuda")
    scheduler = build_scheduler(args.sched, optimizer, total_steps=args.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    if ckpt is None:
        return optimizer, scheduler, scaler, 0, -math.inf, None
    unwrap(model).load_state_dict(ckpt["model"])
    fused = [group["fused"] for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, flag in zip(optimizer.param_groups, fused):
        group["fused"] = flag  # this machine's kernels, not those of the machine that saved it
    scheduler.load_state_dict(ckpt["scheduler"])
    if args.sched == "onecycle" and scheduler.total_steps != args.epochs * steps_per_epoch:
        # Its schedule was laid out for the original length and raises once past it.
        raise UserError(f"--epochs {args.epochs}: a onecycle schedule cannot be stretched on resume (this "
                        f"run's cycle is {scheduler.total_steps // steps_per_epoch} epochs); start a new run")
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return optimizer, scheduler, scaler, ckpt["epoch"], ckpt["best_metric"], ckpt.get("best_epoch")


class RunFolder:
    """The output folder of one training run.

    Args:
        path: the folder (created by :meth:`start`, not before).
        resume_epoch: the epoch the run resumes after, or ``None`` for a fresh run.
        overwrite: allow a fresh run to replace the files of an earlier run there.
    """

    def __init__(self, path, *, resume_epoch=None, overwrite=False):
        self.path = Path(path)
        self.resume_epoch = resume_epoch
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

        When the epoch is the best, ``last.pth`` becomes a second name of ``best.pth`` (a hard
        link, renamed into place) instead of a second serialisation: FCN32s' checkpoints with
        optimiser state weigh over a gigabyte.
        """
        append_jsonl(self.path / "metrics.jsonl", record)
        if is_best:
            save_checkpoint(checkpoint, self.path / "best.pth")
        if snapshot:
            weights = {k: v for k, v in checkpoint.items() if k not in RESUME_ONLY}
            save_checkpoint(weights, self.path / f"epoch_{record['epoch']:03d}.pth")
        if is_best and _link_replace(self.path / "best.pth", self.path / "last.pth"):
            return
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


def finished_run(args, ckpt, metric_name):
    """What a resumed run that already reached ``--epochs`` returns (it trains nothing)."""
    print(f"{args.resume} has already trained {ckpt['epoch']} of --epochs {args.epochs}: "
          "nothing to do (raise --epochs to train further)")
    return {f"best_val_{metric_name}": ckpt["best_metric"], "best_epoch": ckpt.get("best_epoch"),
            "epochs": ckpt["epoch"], "last": ckpt.get("metrics")}


def _cpu_state(state_dict):
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state_dict.items()}


def fit(*, model, criterion, eval_criterion, optimizer, scheduler, scaler, amp_dtype, device,
        make_train_batches, train_transform, val_batches, eval_transform, make_metric, metric_name,
        run, start_epoch, epochs, best_metric, best_epoch, seed, save_epochs, meta, partial=None,
        ctx=distributed.Context(), compile=False, tta=False, progress=True):
    """Train from ``start_epoch + 1`` to ``epochs``, validating and checkpointing every epoch.

    SIGINT or SIGTERM stops the run after the current step: ``last.pth`` then holds that step's
    state (``step``, ``partial``), from which a resume continues exactly.

    Args:
        model: the bare network on ``device`` (compiled and wrapped for several processes here).
        criterion, optimizer, scheduler, scaler, amp_dtype, device: as in
            :func:`utils.engine.train_one_epoch`; ``eval_criterion`` is the validation loss.
        make_train_batches: ``make_train_batches(rng) -> batches`` for one epoch, shuffled
            from ``rng.cpu`` (this process's share of each batch).
        train_transform: ``train_transform(x, y, rng)``, the batched augmentation.
        val_batches: the validation batches (this process's share of every sample, in order).
        eval_transform: ``eval_transform(x, y)``, normalisation.
        make_metric: a fresh metric object each epoch.
        metric_name: the metric's key (``acc``, ``miou``); logged as ``val_<name>``, and the
            one that selects ``best.pth``.
        run: the :class:`RunFolder` (written by the main process only).
        start_epoch: epochs already done (0, or the resumed checkpoint's).
        epochs: the total to reach.
        best_metric, best_epoch: the best validation metric so far and its epoch
            (``-inf`` and ``None`` for a fresh run).
        seed: the run's seed; epoch ``e`` reshuffles and augments from ``(seed, e)``.
        save_epochs: epochs whose checkpoints are kept as snapshots.
        meta: what every checkpoint carries to rebuild the model (arch, problem, args, ...).
        partial: the resumed checkpoint's ``partial`` entry, when it was saved part-way
            through epoch ``start_epoch + 1``.
        ctx: this process's :class:`utils.distributed.Context`.
        compile: run the model through ``torch.compile``.
        tta: validate with horizontal-flip averaging.
        progress: show progress bars (main process only).

    Returns:
        ``{"best_val_<name>": ..., "best_epoch": ..., "epochs": ..., "last": last record}``.

    Raises:
        Interrupted: after saving, when a signal stopped the run.
    """
    key = f"val_{metric_name}"
    record = None
    # DDP inside torch.compile (not the reverse) lets gradient all-reduces overlap the backward
    # pass; validation runs the bare model, outside DDP's collectives.
    train_model = distributed.wrap(model, device, ctx)
    train_model = torch.compile(train_model) if compile else train_model
    runner = torch.compile(model) if compile else model
    progress = progress and ctx.is_main

    def state(epoch, **extra):
        return {**meta, "model": _cpu_state(model.state_dict()), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
                "best_metric": best_metric, "best_epoch": best_epoch, "metrics": record,
                "rng": rng_state(), **extra}

    def check_partial():
        expected = {"device": device.type, "batch_size": meta["args"]["batch_size"], "seed": seed}
        found = {k: partial.get(k) for k in expected}
        if found != expected:
            bad = next(k for k in expected if found[k] != expected[k])
            raise UserError(f"--resume: the checkpoint stopped part-way through epoch {start_epoch + 1} "
                            f"with {bad} {found[bad]}; it continues only with the same {bad} "
                            f"(this run has {expected[bad]})")

    def stopped(stop, where):
        resume = f"{Path(sys.argv[0]).name} --resume {run.path / 'last.pth'}"
        return Interrupted(f"stopped by {stop.name} {where}; saved {run.path / 'last.pth'}; "
                           f"continue with: python3 {resume}", stop.signum)

    with StopOnSignal(ctx.distributed) as stop:
        for epoch in range(start_epoch + 1, epochs + 1):
            start = time.perf_counter()
            if ctx.rank:
                # Rank 0 draws dropout from the global RNG state its checkpoints carry; the
                # others from (seed, epoch, rank), so an epoch-boundary resume replays them too.
                seed_everything(mix_seed(seed, epoch, ctx.rank))
            rng = EpochRNG(seed, epoch, device, ctx.rank)
            batches, resume = make_train_batches(rng), None
            if partial is not None and epoch == start_epoch + 1:
                check_partial()
                batches = batches.from_step(partial["train"]["step"])
                if ctx.is_main:
                    rng.load_state(partial["rng"])  # only rank 0's streams were saved
                # The sums so far are over every process: one of them carries them on.
                resume = partial["train"] if ctx.is_main else {**partial["train"], "loss_sum": 0.0, "samples": 0}
            train = train_one_epoch(
                train_model, criterion, optimizer, batches,
                transform=lambda x, y: train_transform(x, y, rng), device=device, scheduler=scheduler,
                scaler=scaler, amp_dtype=amp_dtype, should_stop=stop, resume=resume,
                desc=f"epoch {epoch}/{epochs}", progress=progress)
            if train["partial"] is not None:
                if ctx.is_main:
                    run.save_partial(state(epoch - 1, step=train["partial"]["step"], partial={
                        "train": train["partial"], "rng": rng.state(), "device": device.type,
                        "batch_size": meta["args"]["batch_size"], "seed": seed}))
                distributed.barrier()  # torchrun ends every process once one exits: save first
                raise stopped(stop, f"in epoch {epoch} after step {train['partial']['step']} of {len(batches)}")
            distributed.broadcast_buffers(model, ctx)
            val = evaluate(runner, eval_criterion, val_batches, make_metric(), transform=eval_transform,
                           device=device, amp_dtype=amp_dtype, tta=tta, desc="validate", progress=progress)
            is_best = val[metric_name] > best_metric
            if is_best:
                best_metric, best_epoch = val[metric_name], epoch
            record = {"epoch": epoch, "lr": train["lr"], "train_loss": train["loss"],
                      "val_loss": val["loss"], key: val[metric_name],
                      **{f"val_{k}": v for k, v in val.items() if k not in ("loss", metric_name)},
                      "seconds": time.perf_counter() - start,
                      "images_per_second": train["images_per_second"]}
            if ctx.is_main:
                run.end_epoch(record, state(epoch), is_best=is_best, snapshot=epoch in save_epochs)
                print(f"epoch {epoch}/{epochs}  train_loss {train['loss']:.4f}  val_loss {val['loss']:.4f}  "
                      f"{key} {val[metric_name]:.4f}{'  (best)' if is_best else ''}  lr {train['lr']:.3g}  "
                      f"{record['seconds']:.1f}s  {train['images_per_second']:.3g} img/s", flush=True)
            if epoch < epochs and stop():
                raise stopped(stop, f"after epoch {epoch}")
    distributed.barrier()
    if ctx.is_main:
        print(f"best {key} {best_metric:.4f} at epoch {best_epoch}; checkpoints in {run.path}", flush=True)
    return {f"best_{key}": best_metric, "best_epoch": best_epoch, "epochs": epochs, "last": record}
