"""Argument parsing shared by every script: a one-line-error parser and the common flags.

Flags used by both problems live here once, as parent parsers; each script adds its own
problem-specific flags on top. Training flags whose default depends on the model's reference
recipe default to ``None`` and are filled in by the script from its recipe table.
"""
import argparse
from pathlib import Path

from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent

# Under float16 the gradient scaler skips a step whose gradients overflow and halves its scale;
# 32 halvings take its first scale, 2**16, to 2**-16, where float16 gradients vanish: a step
# still not finite then is no overflow but a run gone wrong (too high a learning rate, NaN data).
MAX_SKIPPED_IN_A_ROW = 32


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2), not the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults after each flag's help (unless the help explains a ``None`` default itself),
    and keep the docstring's line breaks."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def make_parser(doc, parents, epilog=None):
    """A script's parser: its module docstring as description, defaults shown in ``--help``."""
    return ArgumentParser(description=doc, epilog=epilog, formatter_class=HelpFormatter, parents=parents)


# The defaults of the runtime and speed flags. A training run takes them from the run it resumes,
# so there they default to None and are filled from here afterwards (see training_parser).
RUNTIME_DEFAULTS = dict(device="auto", amp="auto", progress=True, compile=False)
TTA_MODES = ("none", "flip", "d4")


def runtime_parser():
    """Flags for where and how to compute: device, mixed precision, progress bars."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=RUNTIME_DEFAULTS["device"], choices=["auto", "cpu", "cuda"],
                   help="where to compute; auto picks CUDA when available")
    g.add_argument("--amp", default=RUNTIME_DEFAULTS["amp"], choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision; auto means bf16 on CUDA (fp16 on GPUs without native bf16, such as the course's RTX 2080 Ti) and off on the CPU")
    g.add_argument("--progress", default=RUNTIME_DEFAULTS["progress"], action=argparse.BooleanOptionalAction,
                   help="show progress bars")
    return p


def speed_parser():
    """Flags for speed that every model takes, in training (its validation) and in inference."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("speed")
    g.add_argument("--compile", default=RUNTIME_DEFAULTS["compile"], action=argparse.BooleanOptionalAction,
                   help="run the model through torch.compile (a one-off compilation, then faster steps); where it "
                        "cannot build code on this machine (no C++ compiler on the CPU, no Triton on CUDA) the run "
                        "goes on eagerly after one warning: it only changes the speed, so it should not stop a run")
    g.add_argument("--tta", nargs="?", const="flip", default=None, choices=TTA_MODES,
                   help="test-time augmentation, averaging the outputs of several views of each image: "
                        "flip (the image and its horizontal mirror, 2x the compute; what --tta alone "
                        "means) or d4 (the 8 flips and 90-degree rotations, 8x; for overhead tiles); "
                        "default: the recipe's in training, the checkpoint's run's in inference")
    g.add_argument("--no-tta", dest="tta", action="store_const", const="none", help="same as --tta none")
    return p


def segmentation_tta_parser():
    """The multi-scale test-time augmentation flag of the segmenters, in training and in inference."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--tta-scales", type=float_list, default=None, metavar="S,S,...",
                   help="also run every --tta view at these scales of the input (bilinear), resizing the outputs "
                        "back before averaging: 0.75,1,1.25 costs 3.1x the compute of scale 1 alone; default: the "
                        "recipe's in training, the checkpoint's run's in inference")
    return p


def training_parser(recipe_names):
    """Flags every training script shares (Problem 1 and Problem 2).

    Launched by ``torchrun --nproc_per_node=N``, a script trains on N processes; ``--batch-size``
    stays the global batch. Every flag defaults to ``None`` here, so that a resumed run can tell
    the flags the user gave from those it takes from the checkpoint (:mod:`training.setup`);
    :func:`show_defaults` then writes the values they take into ``--help``.

    Args:
        recipe_names: the choices of ``--recipe``, the first being the default.
    """
    p = argparse.ArgumentParser(add_help=False, parents=[runtime_parser(), speed_parser()])
    for action in p._actions:
        if action.dest == "amp":
            action.help += (f"; under fp16 a step whose gradients overflow is skipped (skipped_steps in "
                            f"metrics.jsonl) and {MAX_SKIPPED_IN_A_ROW} in a row stop the run")
        if action.dest in RUNTIME_DEFAULTS:
            shown = {True: "on", False: "off"}.get(action.default, action.default)
            action.help += f" (default: {shown}, or the resumed run's)"
            action.default = None
    g = p.add_argument_group("training (defaults marked 'recipe' come from the model's recipe, listed below)")
    g.add_argument("--output-dir", type=Path, default=None,
                   help="run folder for checkpoints and logs (default: runs/<problem>_<model>)")
    g.add_argument("--epochs", type=int, default=None, help="total number of epochs (recipe)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="training batch size over all processes, shared between them under torchrun (recipe)")
    g.add_argument("--sync-bn", default=None, action=argparse.BooleanOptionalAction,
                   help="under torchrun on GPUs, BatchNorm normalises over the whole global batch (SyncBatchNorm) "
                        "instead of each process's share (default: on for Problem 2 when each process's share of "
                        "--batch-size is under 8, off otherwise; or the resumed run's)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (recipe)")
    g.add_argument("--opt", default=None, choices=["sgd", "adamw"], help="optimiser (recipe)")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (recipe)")
    g.add_argument("--weight-decay", type=float, default=None, help="weight decay (recipe)")
    g.add_argument("--recipe", default=None, choices=recipe_names,
                   help="reference: the seed's recipe of the model; strong: ours, at the same epochs and batch; "
                        "every flag given overrides it (see the list below)")
    g.add_argument("--sched", default=None, choices=["constant", "cosine", "poly", "onecycle"],
                   help="learning-rate schedule, stepped every iteration: constant, cosine to 0, poly "
                        "(1 - t)^0.9, or OneCycle (its own warm-up) (recipe)")
    g.add_argument("--warmup", type=float, default=None,
                   help="share of the run's steps over which the lr rises linearly from 0 before the "
                        "cosine or poly decay (0.02 = the first 2%%) (recipe)")
    g.add_argument("--nesterov", default=None, action=argparse.BooleanOptionalAction,
                   help="Nesterov momentum for SGD (recipe)")
    g.add_argument("--norm-bias-decay", default=None, action=argparse.BooleanOptionalAction,
                   help="apply weight decay to normalisation weights and biases too (recipe)")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="validate, keep as best.pth and grade an exponential moving average of the weights, whose "
                        "per-step decay after step t is min(DECAY, (t - 1) / (t + 19)): it spans about the last "
                        "5%% of the steps taken, up to 1 / (1 - DECAY) steps; 0 for none (recipe)")
    g.add_argument("--eval-batch-size", type=int, default=None, help="validation batch size")
    g.add_argument("--seed", type=int, default=None,
                   help="random seed; epoch e shuffles and augments from (seed, e)")
    g.add_argument("--resume", type=Path, default=None,
                   help="checkpoint (last.pth) to continue from, up to --epochs; flags left out are "
                        "taken from the checkpoint's run")
    g.add_argument("--save-epochs", type=int, nargs="*", default=None,
                   help="epochs whose checkpoint is kept as epoch_NNN.pth (default: first, middle, last)")
    g.add_argument("--pretrained", default=None, action=argparse.BooleanOptionalAction,
                   help="start from the library's pretrained weights (recipe; needs internet once)")
    g.add_argument("--pretrained-file", type=Path, default=None,
                   help="load the pretrained weights from this local file instead of downloading them")
    g.add_argument("--overwrite", default=False, action=argparse.BooleanOptionalAction,
                   help="start afresh in an --output-dir that already holds a run (its files are replaced)")
    return p


def show_defaults(parser, defaults):
    """Write into ``--help`` the value each flag left at ``None`` takes from ``defaults`` (a table
    keyed by flag: a problem's defaults), so that no help text types a default by hand.

    Args:
        parser: a training script's parser.
        defaults: ``{dest: value}``; paths are shown relative to the repository.
    """
    for action in parser._actions:
        if action.default is None and action.help and action.dest in defaults:
            value = defaults[action.dest]
            if isinstance(value, Path):
                value = value.relative_to(REPO) if value.is_relative_to(REPO) else value
            action.help += f" (default: {value}, or the resumed run's)"


def inference_parser(problem):
    """Flags every grading-inference script shares."""
    p = argparse.ArgumentParser(add_help=False, parents=[runtime_parser(), speed_parser()])
    p.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / f"{problem}_best.pth",
                   help="trained checkpoint (best.pth of a run)")
    p.add_argument("--batch-size", type=int, default={"p1": 256, "p2": 4}[problem],
                   help="images per forward pass (halved automatically when the GPU runs out of memory)")
    return p


def report_parser(problem):
    """Flags every report-figure script shares: the run, its validation folder, the output."""
    p = argparse.ArgumentParser(add_help=False, parents=[runtime_parser()])
    p.add_argument("--run", type=Path, required=True, help=f"a {problem}_train.py run folder")
    p.add_argument("--val-dir", type=Path, default=None,
                   help="labelled validation folder (default: the run's own --val-dir)")
    p.add_argument("--out", type=Path, default=REPO / "report", help="folder for the PNGs")
    return p


def check_positive(args, *names):
    """Raise a one-line error for the first flag among ``names`` that is not > 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive (got {value})")


def float_list(text):
    """A flag's comma-separated numbers (``0.75,1,1.25``) as a list of floats. One word rather than
    ``nargs="+"``, which would take the positional arguments after it as more numbers."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def check_scales(args, *names):
    """Raise a one-line error for a scale flag (a list of factors) holding one that is not > 0, or
    a range whose low end is above its high end."""
    for name in names:
        values = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        if values and not all(v > 0 for v in values):
            raise UserError(f"{flag}: every scale must be positive (got {' '.join(map(str, values))})")
        if name == "scale_range" and values and (len(values) != 2 or values[0] > values[1]):
            raise UserError(f"{flag} {','.join(map(str, values))}: give LO,HI with LO at most HI")


def args_to_dict(args):
    """``args`` as a plain JSON/checkpoint-safe dict (paths become strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
