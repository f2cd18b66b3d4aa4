"""A training run's set-up: its flags resolved, where it computes, its folder and its model.

:func:`resolve` is the one place a run's flags get their values, in one order: the declared
defaults and the model's recipe (:mod:`config`), then the run it continues (``--resume``) or reruns
(``--config``), then what the user typed. So ``--resume last.pth`` alone continues the same run,
and ``--config RUN/args.json`` reruns it whatever the recipes have become since.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from config import flags
from models import get_model, get_model_spec, model_options
from training.run import Resume
from utils import distributed
from utils.args import REPO, ArgumentParser
from utils.checkpoint import model_entries
from utils.io import check_writable
from utils.errors import UserError
from utils.run_folder import RunFolder, read_args_file
from utils.runtime import AMP_DTYPES, amp_choice, place_model, resolve_device, seed_everything


class TrainingParser(ArgumentParser):
    """A training script's parser: :mod:`config.flags`' flags of one problem, every default left out
    of the namespace (it holds what was typed; :func:`resolve` does the rest), and a ``--help`` that
    shows the defaults of the ``--model`` and ``--recipe`` typed with it.

    Args:
        doc: the script's docstring, the help's description.
        problem: ``"p1"`` or ``"p2"``.
    """

    def __init__(self, doc, problem):
        self.problem = problem
        model, recipe = flags.BY_NAME["model"].default_for(problem), flags.BY_NAME["recipe"].default
        self.shown = flags.defaults(problem, model, recipe)
        super().__init__(description=doc, epilog=flags.describe(problem),
                         formatter_class=lambda prog: flags.DefaultsFormatter(prog, problem=problem, shown=self.shown))
        flags.add_flags(self, problem)

    def parse_known_args(self, args=None, namespace=None):
        # The model and recipe whose defaults --help shows, read before --help acts.
        peek = ArgumentParser(prog=self.prog, add_help=False)
        peek.add_argument("--model", default=flags.BY_NAME["model"].default_for(self.problem))
        peek.add_argument("--recipe", default=flags.BY_NAME["recipe"].default)
        seen, _ = peek.parse_known_args(args)
        known = seen.model in flags.BY_NAME["model"].choices_for(self.problem)
        if known and seen.recipe in flags.BY_NAME["recipe"].choices:
            self.shown = flags.defaults(self.problem, seen.model, seen.recipe)
        return super().parse_known_args(args, namespace)


def resolve(args, problem):
    """Every flag of a training run, from the typed ones.

    Args:
        args: the parsed namespace (what was typed only: :class:`TrainingParser`).
        problem: ``"p1"`` or ``"p2"``.

    Returns:
        ``(values, resume)``: a namespace of every flag, paths absolute (so args.json and every
        checkpoint name the same folders from any working directory), and the :class:`Resume` of
        ``--resume`` or ``None``.

    Raises:
        UserError: a value outside its flag's range, a missing data folder, a checkpoint or
            args.json that does not fit, a flag a resume keeps given another value.
    """
    typed = vars(args)
    if "config" in typed and "resume" in typed:
        raise UserError("--config and --resume: a resume continues with its run's own flags; give one of them")
    resume, earlier = None, {}
    if "resume" in typed:
        resume = Resume.load(typed["resume"], problem)
        earlier = resume.flags(typed)
        if typed.get("overwrite"):
            raise UserError(f"--overwrite and --resume: a resume continues {resume.path}; give one of them")
        if "output_dir" in typed and Path(typed["output_dir"]).absolute() != earlier["output_dir"]:
            raise UserError(f"--output-dir {typed['output_dir']}: a resume continues in its run's folder "
                            f"({earlier['output_dir']}); to go on elsewhere, copy that folder and resume the copy")
    elif "config" in typed:
        earlier = _config(typed, problem)
    model = typed.get("model", earlier.get("model", flags.BY_NAME["model"].default_for(problem)))
    recipe = typed.get("recipe", earlier.get("recipe", flags.BY_NAME["recipe"].default))
    values = {**flags.defaults(problem, model, recipe), **earlier, **typed}
    if values["output_dir"] is None:
        values["output_dir"] = REPO / "runs" / f"{problem}_{model}"
    if values["save_epochs"] is None:
        values["save_epochs"] = flags.default_save_epochs(values["epochs"])
    for key, value in values.items():
        if isinstance(value, Path):
            values[key] = value.absolute()
    if resume is not None:
        resume.check_kept(values)
    flags.check(values, problem)
    flags.check_typed(typed, values)
    _check_data(values, problem, resumed=resume is not None)
    return argparse.Namespace(**values), resume


def _config(typed, problem):
    """The flags of ``--config`` (a run's args.json, or its run folder) under those typed."""
    path = typed["config"]
    saved = read_args_file(path, "--config")
    if saved.get("model") not in flags.BY_NAME["model"].choices_for(problem):
        raise UserError(f"--config {path}: the flags of a {saved.get('model')} run, not of a {problem} model "
                        f"(give it to the script that trained it)")
    unknown = [k for k in saved if k not in flags.BY_NAME or problem not in flags.BY_NAME[k].problems]
    if unknown:
        raise UserError(f"--config {path}: {unknown[0]} is no flag of {flags.SCRIPTS[problem]} (its --help lists them)")
    return flags.earlier_run(saved, typed, problem)


def _check_data(values, problem, *, resumed):
    """Refuse a missing training or validation folder before anything is built, naming its flag and,
    for the course data's default place, how to fetch it; and a ``--cache-dir`` that cannot be a folder."""
    for key in ("train_dir", "val_dir"):
        path, flag = values[key], flags.BY_NAME[key]
        if path.is_dir():
            continue
        if path == flag.default_for(problem):
            hint = f"fetch the course data with: bash hw1_download.sh --only hw1_data.zip, or give {flag.option}"
        elif resumed:
            hint = f"the resumed run's; give {flag.option} where the data is now"
        else:
            hint = f"give {flag.option} the folder that holds the data"
        raise UserError(f"{flag.option} {path}: no such folder ({hint})")
    cache = values.get("cache_dir")
    if cache is not None:
        check_writable(cache, "--cache-dir", folder=True)


@dataclass
class RunSetup:
    """Where and how a training run computes, built once from its flags.

    Attributes:
        args: the resolved flags (:func:`resolve`).
        problem: ``"p1"`` or ``"p2"``.
        resume: the :class:`training.run.Resume` it continues, or ``None`` for a fresh run.
        device: the ``torch.device``.
        amp_dtype: the autocast dtype, or ``None``.
        amp_why: why ``--amp auto`` chose the run's precision (``""`` when it was typed as such).
        ctx: this process's :class:`utils.distributed.Context`.
        folder: the :class:`utils.run_folder.RunFolder` (written by the main process only).
        sync_bn: whether training turns BatchNorm into SyncBatchNorm
            (:func:`utils.distributed.resolve_sync_bn`).
    """

    args: argparse.Namespace
    problem: str
    resume: Resume | None
    device: torch.device
    amp_dtype: torch.dtype | None
    ctx: distributed.Context
    folder: RunFolder
    sync_bn: bool = False
    amp_why: str = ""

    @classmethod
    def prepare(cls, typed, problem):
        """Resolve the flags (:func:`resolve`), pick the device, check what a resume continues, join
        the process group under torchrun and check the run folder, before any data is read."""
        args, resume = resolve(typed, problem)
        device = resolve_device(args.device)
        # args.json records the precision chosen, so that a resume or a --config rerun computes as
        # this run did on whatever machine it runs.
        args.amp, amp_why = amp_choice(args.amp, device)
        if resume is not None:
            resume.check(vars(args), device)
        ctx = distributed.init(device)
        distributed.check_batch_share(args.batch_size, ctx)
        sync_bn = distributed.resolve_sync_bn(args.sync_bn, problem=problem, batch_size=args.batch_size, ctx=ctx,
                                              device=device)
        folder = RunFolder(args.output_dir)
        if ctx.is_main:  # under torchrun on several machines the folder may exist on rank 0's alone
            folder.check_new(resumed=resume is not None, overwrite=args.overwrite)
        return cls(args, problem, resume, device, AMP_DTYPES[args.amp], ctx, folder, sync_bn, amp_why)

    def build_model(self, *, num_classes, mean=None, std=None, class_weights=None):
        """The run's ``--model`` on the device, its weights initialised from ``--seed``.

        Pretrained weights are fetched only for a fresh run: a resumed one loads its own.

        Args:
            num_classes: outputs of the head.
            mean, std: the data's normalisation, for a model whose weights bring none of their own.
            class_weights: Problem 2's class weights in the loss, which the checkpoints record.

        Returns:
            ``(model, entries)``: ``entries`` is what every checkpoint carries to rebuild the model
            (:func:`utils.checkpoint.model_entries`).
        """
        args, resumed = self.args, self.resume is not None
        spec = get_model_spec(args.model)
        # A model option out of effect (--freeze-bn without pretrained statistics to keep) builds as off.
        options = {name: (value if flags.in_effect(name, vars(args)) else flags.BY_NAME[name].off)
                   for name, value in model_options(args.model, args).items()}
        if spec.mean is not None:  # pretrained weights bring the normalisation they were trained with
            mean, std = spec.mean, spec.std
        rebuild = {k: v for k, v in options.items() if k not in spec.train_only}
        entries = model_entries(problem=self.problem, arch=args.model, model_kwargs={"num_classes": num_classes,
                                                                                     **rebuild},
                                mean=mean, std=std, args=flags.to_json(vars(args)), class_weights=class_weights)
        seed_everything(args.seed)
        model = get_model(args.model, num_classes=num_classes, pretrained=args.pretrained and not resumed,
                          pretrained_file=None if resumed else args.pretrained_file, **options)
        return place_model(model, self.device), entries
