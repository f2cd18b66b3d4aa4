"""A training run's set-up: its flags resolved, where it computes, its folder and its model.

Every flag the user leaves out is taken from the resumed checkpoint's run first, then from the
defaults and the model's recipe (:mod:`training.recipes`), so ``--resume last.pth`` alone continues
the same run. A run stopped part-way through an epoch continues only with the numbers it started
with: a flag given on resume that would change them is refused in one line.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from models import get_model, get_model_spec, model_options
from training.engine import tta_mode
from training.recipes import DEFAULTS, RECIPES
from training.run import RunFolder
from training.run import mid_epoch_refusal
from utils import distributed
from utils.args import REPO, RUNTIME_DEFAULTS, args_to_dict, check_positive, check_scales
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.runtime import place_model, resolve_amp, resolve_device, seed_everything

# Flags a resume may always give anew: none changes what the run computes.
FREE_ON_RESUME = frozenset({"resume", "overwrite", "output_dir", "progress", "save_epochs", "eval_batch_size"})


def resolve_flags(args, problem):
    """Complete a training script's flags: the user's, then the resumed run's, then the recipe's.

    Loads ``--resume`` (refusing another problem's or another model's checkpoint, and flags that
    would change an epoch stopped part-way), fills every flag left at ``None``, and checks the
    numbers.

    Args:
        args: the parsed flags (changed in place).
        problem: ``"p1"`` or ``"p2"``.

    Returns:
        The resumed checkpoint, or ``None``.
    """
    given = {key for key, value in vars(args).items() if value is not None}
    ckpt = None
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, problem=problem)
        if "optimizer" not in ckpt:
            raise UserError(f"--resume {args.resume}: holds weights only (best.pth and the epoch_NNN.pth "
                            f"snapshots keep no optimiser state); resume from {Path(args.resume).parent / 'last.pth'}")
        if args.model is not None and args.model != ckpt["arch"]:
            raise UserError(f"--resume {args.resume}: a checkpoint of {ckpt['arch']}, "
                            f"not of --model {args.model}")
        if ckpt.get("partial") is not None:
            _check_mid_epoch(args, given, ckpt)
        # A new --epochs means new default snapshots, not the old run's. The run goes on in the folder
        # that holds the checkpoint, wherever the run has been moved since.
        skip = {"resume", "overwrite", "output_dir"} | ({"save_epochs"} if args.epochs is not None else set())
        for key, value in ckpt["args"].items():
            if key in skip or getattr(args, key, None) is not None:
                continue
            setattr(args, key, Path(value) if _is_path(key) and isinstance(value, str) else value)
        if args.output_dir is None:
            args.output_dir = Path(args.resume).parent
    _fill(args, RUNTIME_DEFAULTS)
    _fill(args, DEFAULTS[problem])
    _fill(args, RECIPES[problem][args.model][args.recipe])
    args.tta = tta_mode(args.tta)
    if args.output_dir is None:
        args.output_dir = REPO / "runs" / f"{problem}_{args.model}"
    # Absolute, so that args.json and every checkpoint name the same folders from any working directory.
    for key, value in vars(args).items():
        if _is_path(key) and value is not None:
            setattr(args, key, Path(value).absolute())
    check_positive(args, "epochs", "batch_size", "eval_batch_size", "lr")
    check_scales(args, "scale_range", "tta_scales")
    if not 0 <= args.ema < 1:
        raise UserError(f"--ema {args.ema}: a decay in [0, 1) (0 for none)")
    if args.save_epochs is None:
        args.save_epochs = default_save_epochs(args.epochs)
    bad = [e for e in args.save_epochs if not 1 <= e <= args.epochs]
    if bad:
        raise UserError(f"--save-epochs {bad[0]}: not an epoch of this run (1 to {args.epochs})")
    _check_data(args, problem, resumed=ckpt is not None)
    return ckpt


def _is_path(key):
    """Whether flag ``key`` names a file or folder."""
    return key.endswith(("_dir", "_file")) or key == "resume"


def _check_data(args, problem, *, resumed):
    """Refuse a missing training or validation folder before anything is built, naming its flag and,
    for the course data's default place, how to fetch it."""
    for key in ("train_dir", "val_dir"):
        path = getattr(args, key)
        if path.is_dir():
            continue
        flag = "--" + key.replace("_", "-")
        if path == DEFAULTS[problem][key]:
            hint = f"fetch the course data with: bash hw1_download.sh --only hw1_data.zip, or give {flag}"
        elif resumed:
            hint = f"the resumed run's; give {flag} where the data is now"
        else:
            hint = f"give {flag} the folder that holds the data"
        raise UserError(f"{flag} {path}: no such folder ({hint})")


def _check_mid_epoch(args, given, ckpt):
    """Refuse a flag given anew that changes the numbers of an epoch stopped part-way."""
    saved = ckpt["args"]
    for key in sorted(given - FREE_ON_RESUME):
        if key == "epochs" and saved.get("sched") == "constant":
            continue  # a constant learning rate does not depend on the run's length
        new = args_to_dict(argparse.Namespace(**{key: getattr(args, key)}))[key]
        if _is_path(key) and new is not None and key in saved and saved[key] is not None:
            new, saved_value = str(Path(new).absolute()), str(Path(saved[key]).absolute())
        else:
            saved_value = saved.get(key)
        if key in saved and new != saved_value:
            raise mid_epoch_refusal(ckpt["epoch"] + 1, key, saved[key], new)


def _fill(args, values):
    """Replace every ``None`` flag by its value in ``values`` (in place)."""
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def default_save_epochs(epochs):
    """The first, middle (n/2) and last epoch: the report's t-SNE and mask figures need these."""
    return sorted({1, max(1, epochs // 2), epochs})


@dataclass
class RunSetup:
    """Where and how a training run computes, built once from its flags.

    Attributes:
        args: the resolved flags.
        problem: ``"p1"`` or ``"p2"``.
        ckpt: the resumed checkpoint, or ``None`` for a fresh run.
        device: the ``torch.device``.
        amp_dtype: the autocast dtype, or ``None``.
        ctx: this process's :class:`utils.distributed.Context`.
        folder: the :class:`training.run.RunFolder` (written by the main process only).
        sync_bn: whether training turns BatchNorm into SyncBatchNorm
            (:func:`utils.distributed.resolve_sync_bn`).
    """

    args: argparse.Namespace
    problem: str
    ckpt: dict | None
    device: torch.device
    amp_dtype: torch.dtype | None
    ctx: distributed.Context
    folder: RunFolder
    sync_bn: bool = False

    @classmethod
    def prepare(cls, args, problem):
        """Resolve the flags (:func:`resolve_flags`), pick the device, join the process group
        under torchrun and check the run folder, before any data is read."""
        ckpt = resolve_flags(args, problem)
        device = resolve_device(args.device)
        amp_dtype = resolve_amp(args.amp, device)
        ctx = distributed.init(device)
        distributed.check_batch_share(args.batch_size, ctx)
        sync_bn = distributed.resolve_sync_bn(args.sync_bn, problem=problem, batch_size=args.batch_size, ctx=ctx,
                                              device=device)
        folder = RunFolder(args.output_dir, resume_epoch=ckpt["epoch"] if ckpt else None, overwrite=args.overwrite,
                           check=ctx.is_main)
        return cls(args, problem, ckpt, device, amp_dtype, ctx, folder, sync_bn)

    def build_model(self, *, num_classes, mean=None, std=None):
        """The run's ``--model`` on the device, its weights initialised from ``--seed``.

        Pretrained weights are fetched only for a fresh run: a resumed one loads its own.

        Args:
            num_classes: outputs of the head.
            mean, std: the data's normalisation, for a model whose weights bring none of their own.

        Returns:
            ``(model, meta)``: ``meta`` is what every checkpoint carries to rebuild the model
            (problem, arch, model_kwargs, num_classes, mean, std, args).
        """
        args, resumed = self.args, self.ckpt is not None
        spec = get_model_spec(args.model)
        options = model_options(args.model, args)
        seed_everything(args.seed)
        model = get_model(args.model, num_classes=num_classes, pretrained=args.pretrained and not resumed,
                          pretrained_file=None if resumed else args.pretrained_file, **options)
        if spec.mean is not None:
            mean, std = spec.mean, spec.std
        rebuild = {k: v for k, v in options.items() if k not in spec.train_only}
        meta = {"problem": self.problem, "arch": args.model, "model_kwargs": {"num_classes": num_classes, **rebuild},
                "num_classes": num_classes, "mean": list(mean), "std": list(std), "args": args_to_dict(args)}
        return place_model(model, self.device), meta
