"""Every flag of the training scripts, declared once.

A :class:`Flag` says everything about one flag: its name, type, help, valid values, the problems
and models it applies to, its default (a value, or the model's recipe's: :data:`RECIPE`, with the
value that means "off" for the recipes that leave it out), what it is to a run (:attr:`Flag.role`)
and, through :func:`words`, how it is written back on a command line. From :data:`FLAGS` follow
the training parsers and their ``--help`` (:func:`add_flags`), the defaults of a model's recipe
(:func:`defaults`), the check of every value (:func:`check`), ``args.json`` (:func:`to_json`,
:func:`from_json`), what a resume may change (:data:`FREE_ON_RESUME`), what tells runs apart in a
comparison (:data:`COMPARED`) and the reproduce command (:func:`command`).
"""
import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from config.recipes import PARTS, RECIPE_NAMES, RECIPES
from datasets.presets import BEIT_PRESETS, CROP_FLIP, P1_AUGMENTS, P2_AUGMENTS
from inference.tta import MODES
from models import list_models
from utils.args import MAX_SKIPPED_IN_A_ROW, REPO, HelpFormatter, float_list
from utils.errors import UserError

RECIPE = "recipe"  # a default taken from the model's recipe (config.recipes)
PROBLEMS = ("p1", "p2")
SCRIPTS = {"p1": "p1_train.py", "p2": "p2_train.py"}

# What a flag is to a run:
RECIPE_ROLE = "recipe"  # what is trained: compared between runs, fixed inside an epoch stopped part-way
PLACE = "place"  # where and how it computes (data, device, precision): not compared, fixed mid-epoch too
RECORD = "record"  # changes no number of the run (folders, logs, snapshots): free on any resume


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric flag: from ``low`` to ``high`` (``None``: unbounded), each end
    closed or open, and finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self):
        if self.low == 0 and self.high is None:
            return "positive" if self.low_open else "non-negative"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"in {left}{_bound(self.low, '-inf')}, {_bound(self.high, 'inf')}{right}"


def _bound(value, unbounded):
    """One end of a :class:`Range` as text: an integer without its point, else ``%g``."""
    if value is None:
        return unbounded
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0, None)
UNIT_OPEN = Range(0, 1, high_open=True)  # [0, 1): a probability or a share that cannot be all


@dataclass(frozen=True)
class Flag:
    """One training flag.

    Attributes:
        name: the key in ``args.json`` and the parsed namespace (``batch_size`` is ``--batch-size``).
        help: its ``--help`` text, without the default (added from :attr:`default`), or
            ``{problem: text}`` (``None``: the scripts that do not train).
        type: ``str``, ``int``, ``float``, ``Path``, ``bool`` (a ``--x/--no-x`` switch),
            :func:`utils.args.float_list` (one comma-separated word) or ``list`` (integers, one word each).
        default: the value when nothing sets it, ``{problem: value}``, or :data:`RECIPE`.
        off: for a :data:`RECIPE` flag, the value of the recipes that do not set it (the part is off).
        choices: the valid values of a word flag, or ``{problem: values}``.
        range: the valid values of a number (every element of a list); ``what`` names such a
            number in the message that refuses one.
        problems: the problems whose training script has it.
        models: the models it changes (``None``: every model of its problems); ``--help`` says so.
            Typed for another model it is refused (:func:`check_typed`); from a recipe or an
            ``args.json`` it is left unused.
        only_with: ``(flag, value)``, ``(flag, (values))`` or ``(flag, Range)``: it changes the run only
            when that flag has that value (SGD's momentum, the focal loss's numbers); ``--help`` says so, and a value
            typed for another is refused as for :attr:`models`.
        refused_elsewhere: with ``only_with``, a value other than :attr:`off` is refused (by
            :func:`check`) where the other flag has another value, rather than ignored: an option of
            an augmentation preset asked of another preset is a mistake to report.
        role: :data:`RECIPE_ROLE`, :data:`PLACE` or :data:`RECORD`.
        kept: why a resume keeps the run's value whatever is typed (the checkpoint's weights or
            optimiser state are of it), which it then refuses another value with; ``None``: a resume
            may change it at an epoch boundary, from where the new value acts
            (:meth:`training.run.Resume.changes`).
        group: its ``--help`` section.
        metavar: its placeholder in ``--help``.
    """

    name: str
    help: str | dict
    type: object = str
    default: object = None
    off: object = None
    choices: tuple | dict | None = None
    range: Range | None = None
    what: str = "a value"
    problems: tuple = PROBLEMS
    models: tuple | None = None
    only_with: tuple | None = None
    refused_elsewhere: bool = False
    role: str = RECIPE_ROLE
    kept: str | None = None
    group: str = "training"
    metavar: str | None = None

    @property
    def option(self):
        return "--" + self.name.replace("_", "-")

    def default_for(self, problem):
        return self.default.get(problem) if isinstance(self.default, dict) else self.default

    def help_for(self, problem):
        return self.help.get(problem) if isinstance(self.help, dict) else self.help

    def choices_for(self, problem):
        if self.name == "model":
            return tuple(list_models(problem))
        return self.choices.get(problem) if isinstance(self.choices, dict) else self.choices


_OUTPUT = "runs/<problem>_<model>"
_AMP = ("mixed precision; auto means bf16 where the device computes bfloat16 natively (CUDA from Ampere on; CPUs "
        "with AMX or AVX512-BF16), fp16 on older GPUs (the course's RTX 2080 Ti) and off on other CPUs, where "
        "bfloat16 is emulated and slower")
# Why a resume keeps a flag's value (Flag.kept):
_NETWORK = "the checkpoint's weights are of that network"
_WEIGHTS = "a resume starts from the checkpoint's weights"
_GROUPS = "the optimiser's state is laid out in that run's parameter groups"
FLAGS = (
    # where and how it computes
    Flag("device", "where to compute; auto picks CUDA when available", default="auto",
         choices=("auto", "cpu", "cuda"), role=PLACE, group="runtime"),
    Flag("amp", {problem: _AMP + ("" if problem is None else "; args.json records the precision chosen; under fp16 "
                                  "a training step whose gradients overflow is skipped (skipped_steps in "
                                  f"metrics.jsonl) and {MAX_SKIPPED_IN_A_ROW} in a row stop the run")
                 for problem in (None, *PROBLEMS)},
         default="auto", choices=("auto", "bf16", "fp16", "off"), role=PLACE, group="runtime"),
    Flag("progress", "show progress bars (default: when stderr is a terminal, so a log file gets no frames)",
         type=bool, role=RECORD, group="runtime"),
    Flag("compile", "run the model through torch.compile (a one-off compilation, then faster steps); where it "
                    "cannot build code on this machine (no C++ compiler on the CPU, no Triton on CUDA) the run "
                    "goes on eagerly after one warning: it only changes the speed, so it should not stop a run",
         type=bool, default=False, role=PLACE, group="speed"),
    # the run
    Flag("model", {"p1": "network: vgg13 (VGG13-BN from scratch, method A) or beit (BEiT-base, ImageNet-22k "
                         "weights fine-tuned with a linear head, method B)",
                   "p2": "network: fcn32s (VGG16-FCN32s, model A), deeplabv3 (DeepLabv3-ResNet50 on COCO weights, "
                         "model B) or lraspp (LR-ASPP on MobileNetV3-Large, 3.2M parameters: fast enough for the "
                         "CPU demo and small GPUs)"},
         default={"p1": "vgg13", "p2": "fcn32s"}, kept=_NETWORK),
    Flag("recipe", "reference: the seed's recipe of the model; strong: ours, at the same epochs and batch; every "
                   "flag given overrides it (see the list below)", default=RECIPE_NAMES[0], choices=RECIPE_NAMES,
         kept="a resume continues that run's flags"),
    Flag("config", "a run's args.json: its flags, which every flag typed besides overrides (python3 p1_train.py "
                   "--config RUN/args.json --output-dir NEW reruns RUN exactly)", type=Path, role=RECORD),
    Flag("train_dir", {"p1": "folder of {label}_{id}.png training images",
                       "p2": "folder of xxxx_sat.jpg + xxxx_mask.png training pairs"}, type=Path,
         default={"p1": REPO / "hw1_data" / "p1_data" / "train_50", "p2": REPO / "hw1_data" / "p2_data" / "train"},
         role=PLACE),
    Flag("val_dir", {"p1": "folder of {label}_{id}.png validation images", "p2": "folder of validation pairs"},
         type=Path,
         default={"p1": REPO / "hw1_data" / "p1_data" / "val_50", "p2": REPO / "hw1_data" / "p2_data" / "validation"},
         role=PLACE),
    Flag("output_dir", f"run folder for checkpoints and logs (default: {_OUTPUT}; on --resume, the checkpoint's "
                       "folder)", type=Path, role=RECORD),
    Flag("resume", "checkpoint (last.pth, or its run folder) to continue from, up to --epochs; flags left out are "
                   "taken from the checkpoint's run", type=Path, role=RECORD),
    Flag("overwrite", "start afresh in an --output-dir that already holds a run (its files are replaced)",
         type=bool, default=False, role=RECORD),
    Flag("epochs", "total number of epochs", type=int, default=RECIPE, range=POSITIVE),
    Flag("batch_size", "training batch size over all processes, shared between them under torchrun", type=int,
         default=RECIPE, range=POSITIVE),
    Flag("eval_batch_size", "validation batch size", type=int, default={"p1": 256, "p2": 8}, range=POSITIVE,
         role=RECORD),
    Flag("save_epochs", "epochs whose checkpoint is kept as epoch_NNN.pth (default: first, middle, last)",
         type=list, range=POSITIVE, what="an epoch", role=RECORD),
    Flag("seed", "random seed; epoch e shuffles and augments from (seed, e)", type=int, default=0,
         range=Range(0, 2 ** 32 - 1), what="a seed"),
    Flag("sync_bn", "under torchrun on GPUs, BatchNorm normalises over the whole global batch (SyncBatchNorm) "
                    "instead of each process's share (default: on for Problem 2 when each process's share of "
                    "--batch-size is under 8, off otherwise; or the resumed run's)", type=bool, role=PLACE),
    Flag("pretrained", "start from the library's pretrained weights (needs internet once)", type=bool,
         default=RECIPE, off=False, kept=_WEIGHTS),
    Flag("pretrained_file", "load the pretrained weights from this local file instead of downloading them",
         type=Path, role=PLACE, kept=_WEIGHTS),
    # the optimiser and its schedule
    Flag("opt", "optimiser", default=RECIPE, choices=("sgd", "adamw"), kept="the optimiser's state is of that kind"),
    Flag("lr", "learning rate", type=float, default=RECIPE, range=POSITIVE),
    Flag("momentum", "SGD momentum", type=float, default=RECIPE, off=0.0, range=UNIT_OPEN, what="a momentum",
         only_with=("opt", "sgd")),
    Flag("nesterov", "Nesterov momentum for SGD", type=bool, default=RECIPE, off=False, only_with=("opt", "sgd")),
    Flag("weight_decay", "weight decay", type=float, default=RECIPE, off=0.0, range=NON_NEGATIVE),
    Flag("norm_bias_decay", "apply weight decay to normalisation weights and biases too", type=bool,
         default=RECIPE, off=True, kept=_GROUPS),
    Flag("sched", "learning-rate schedule, stepped every iteration: constant, cosine to 0, poly (1 - t)^0.9, or "
                  "OneCycle (its own warm-up)", default=RECIPE, choices=("constant", "cosine", "poly", "onecycle")),
    Flag("warmup", "share of the run's steps over which the lr rises linearly from 0 before the cosine or poly "
                   "decay (0.02 = the first 2%%)", type=float, default=RECIPE, off=0.0, range=Range(0, 1),
         what="a share of the steps"),
    Flag("ema", "validate, keep as best.pth and grade an exponential moving average of the weights, whose per-step "
                "decay after step t is min(DECAY, (t - 1) / (t + 19)): it spans about the last 5%% of the steps "
                "taken, and DECAY caps it only from step (1 + 19 DECAY) / (1 - DECAY) on (9,981 for 0.998); 0 for "
                "none", type=float, default=RECIPE,
         off=0.0, range=Range(0, 1, high_open=True), what="a decay", metavar="DECAY"),
    Flag("tta", "test-time augmentation (a run's validation, and so its grading), averaging the outputs of several "
                "views of each image: flip (the image and its horizontal mirror, 2x the compute; what --tta alone "
                "means) or d4 (the 8 flips and 90-degree rotations, 8x; for overhead tiles); --no-tta is --tta none",
         default=RECIPE, off="none", choices=MODES, group="speed"),
    # Problem 1
    Flag("augment", "augmentation preset", default=RECIPE, choices={"p1": P1_AUGMENTS, "p2": P2_AUGMENTS}),
    Flag("label_smoothing", "label smoothing of the cross-entropy, applied once, to mixup/cutmix targets too",
         type=float, default=RECIPE, off=0.0, range=UNIT_OPEN, what="a smoothing", problems=("p1",)),
    Flag("random_erasing", "probability of erasing a random rectangle of each training image", type=float,
         default=RECIPE, off=0.0, range=Range(0, 1), what="a probability", problems=("p1",)),
    Flag("erasing_mode", "what --random-erasing fills its rectangle with: zero (the mean of the normalised image) or "
                         "pixel (per-pixel standard normal noise: timm's re_mode pixel, as BEiT fine-tunes)",
         default=RECIPE, off="zero", choices=("zero", "pixel"), problems=("p1",), only_with=("random_erasing", POSITIVE)),
    Flag("cutmix", "probability that a training batch is mixed by CutMix (alpha 1), 0 for never", type=float,
         default=RECIPE, off=0.0, range=Range(0, 1), what="a probability", problems=("p1",), metavar="P",
         only_with=("augment", CROP_FLIP), refused_elsewhere=True),
    Flag("resized_crop", "train on a random crop of each image covering a share in [LO, HI] of its area, its aspect "
                         "ratio in [3/4, 4/3], resized to 224 with the bicubic kernel (torchvision's "
                         "RandomResizedCrop, as BEiT fine-tunes: 0.08,1), in place of the preset's resize and crop; "
                         "1,1 for none", type=float_list, default=RECIPE, off=[1.0, 1.0],
         range=Range(0, 1, low_open=True), what="an area share", problems=("p1",), metavar="LO,HI",
         only_with=("augment", BEIT_PRESETS), refused_elsewhere=True),
    Flag("rand_augment", "RandAugment of magnitude M (of 10) after the crop and flip: timm's rand-mM-mstd0.5-inc1, as "
                         "BEiT fine-tunes (M 9): each image draws 2 of 15 ops, each applied with probability 0.5 at "
                         "a magnitude drawn around M; 0 for none", type=float, default=RECIPE, off=0.0,
         range=Range(0, 10), what="a magnitude", problems=("p1",), metavar="M",
         only_with=("augment", BEIT_PRESETS), refused_elsewhere=True),
    Flag("layer_decay", "layer-wise lr decay, each block's lr this factor times the next one's", type=float,
         default=RECIPE, off=1.0, range=Range(0, 1, low_open=True), what="a factor", problems=("p1",),
         models=("beit",), kept=_GROUPS),
    Flag("drop_path", "stochastic depth rate", type=float, default=RECIPE, off=0.0, range=UNIT_OPEN,
         what="a probability", problems=("p1",), models=("beit",)),
    Flag("global_pool", "pool the patch tokens (avg, as the reference ran) or take [CLS]", default="avg",
         choices=("avg", "token"), problems=("p1",), models=("beit",), kept=_NETWORK),
    Flag("dropout", "dropout probability in the classifier (vgg13), after fc6/fc7 (fcn32s)", type=float,
         default=0.5, range=UNIT_OPEN, what="a probability", models=("vgg13", "fcn32s")),
    # Problem 2
    Flag("loss", "per-pixel loss", default=RECIPE, choices=("ce", "focal"), problems=("p2",)),
    Flag("focal_alpha", "focal loss alpha", type=float, default=0.2, range=Range(0, 1, low_open=True),
         what="a weight", problems=("p2",), only_with=("loss", "focal")),
    Flag("focal_gamma", "focal loss gamma", type=float, default=2.0, range=NON_NEGATIVE, problems=("p2",),
         only_with=("loss", "focal")),
    Flag("aux_weight", "weight of the auxiliary head's loss", type=float, default=RECIPE, off=0.0,
         range=NON_NEGATIVE, problems=("p2",),
         models=("deeplabv3",)),
    Flag("aux_lr_scale", "learning rate of the auxiliary head, times --lr", type=float, default=RECIPE, off=1.0,
         range=POSITIVE, problems=("p2",), models=("deeplabv3",), kept=_GROUPS),
    Flag("ignore_unknown", "leave Unknown pixels out of the loss; the model then never predicts Unknown, and the "
                           "course's mIoU counts each Unknown pixel as a false positive of the class predicted there",
         type=bool, default=RECIPE, problems=("p2",)),
    Flag("scale_range", "scale each training tile and its mask by a factor drawn from [LO, HI] and take a random "
                        "window of the tile size (mirrored where a shrunk tile does not fill it); 1,1 for none",
         type=float_list, default=RECIPE, off=[1.0, 1.0], range=POSITIVE, what="a scale", problems=("p2",),
         metavar="LO,HI"),
    Flag("color_jitter", "strength of the random brightness, contrast and saturation change of each training "
                         "tile, 0 for none", type=float, default=RECIPE, off=0.0, range=Range(0, 1),
         what="a strength", problems=("p2",)),
    Flag("class_weights", "weigh each class's pixels in the loss: median-freq is the median class frequency over "
                          "the class's own, a class's frequency being its pixels over those of the training tiles "
                          "holding it (Eigen & Fergus), counted once on the training masks", default=RECIPE, off="none",
         choices=("none", "median-freq"), problems=("p2",)),
    Flag("backbone", "its ResNet (torchvision's COCO weights for both)", default=RECIPE, off="resnet50",
         choices=("resnet50", "resnet101"), problems=("p2",), models=("deeplabv3",), kept=_NETWORK),
    Flag("fixed_upsampling", "keep the x32 upsampling at its bilinear initialisation instead of learning it, as "
                             "FCN-32s does (Long et al., CVPR 2015: final-layer deconvolution fixed to bilinear)",
         type=bool, default=RECIPE, off=False, problems=("p2",), models=("fcn32s",), kept=_GROUPS),
    Flag("freeze_bn", "keep the ResNet backbone's BatchNorm statistics at the pretrained ones in training (its "
                      "scales and shifts still learn; the heads' BatchNorm trains): at batch 4 a BatchNorm batch is "
                      "4 tiles, where the source recipe's synchronised one was 32",
         type=bool, default=RECIPE, off=False, problems=("p2",), models=("deeplabv3",), only_with=("pretrained", True)),
    Flag("tta_scales", "also run every --tta view at these scales of the input (bilinear), resizing the outputs "
                       "back before averaging: 0.75,1,1.25 costs 3.1x the compute of scale 1 alone",
         type=float_list, default=RECIPE, off=[1.0], range=POSITIVE, what="a scale", problems=("p2",), group="speed",
         metavar="S,S,..."),
    Flag("cache_dir", "keep the decoded tiles here as .npy and memory-map them on later runs (under torchrun, each "
                      "machine's first process writes them and its others map them, so machines need not share "
                      "the folder)", type=Path, problems=("p2",), role=RECORD),
    Flag("tile_size", "size every training and validation tile and mask must have (any size: every model brings "
                      "its output back to its input's)", type=int, default=512, range=POSITIVE, problems=("p2",),
         role=PLACE),
    Flag("bn_momentum", "BatchNorm running-statistics momentum (default: torchvision's, 0.01 in the backbone; 0.1 "
                        "suits short runs and random weights)", type=float, range=Range(0, 1, low_open=True),
         what="a momentum", problems=("p2",), models=("lraspp",)),
)
BY_NAME = {flag.name: flag for flag in FLAGS}
# The flags a resume may give anew even inside an epoch stopped part-way: none changes a number of the run.
FREE_ON_RESUME = frozenset(f.name for f in FLAGS if f.role == RECORD)
# The flags that tell two runs' recipes apart (not where they ran, nor their bookkeeping).
COMPARED = frozenset(f.name for f in FLAGS if f.role == RECIPE_ROLE)
# The flags of one invocation rather than of the run: a resume does not take them from its run, nor a
# rerun from its args.json, nor a reproduce command (which writes to a new folder) from either.
OF_THE_INVOCATION = frozenset({"output_dir", "resume", "overwrite", "config"})
_NOT_REPRODUCED = OF_THE_INVOCATION | {"progress"}  # nor the terminal's progress bars


def flags_of(problem):
    """The flags of ``problem``'s training script, in declaration order."""
    return [f for f in FLAGS if problem in f.problems]


def add_flags(parser, problem):
    """Add ``problem``'s flags to ``parser``, each in its ``--help`` group, every default left out of
    the namespace (``argparse.SUPPRESS``): the namespace holds what was typed, and
    :func:`training.setup.resolve` the rest."""
    groups = {}
    for flag in flags_of(problem):
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(_GROUP_TITLES[flag.group])
        _add(groups[flag.group], flag, default=argparse.SUPPRESS, help=_scoped_help(flag, problem),
             choices=flag.choices_for(problem))


def _add(group, flag, *, default, help, choices):
    """Add ``flag`` to ``group`` as its type asks: a ``--x/--no-x`` switch, integers one word each, the
    ``--tta [MODE]``/``--no-tta`` pair, or one typed word."""
    if flag.type is bool:
        group.add_argument(flag.option, action=argparse.BooleanOptionalAction, default=default, help=help)
    elif flag.type is list:
        group.add_argument(flag.option, type=int, nargs="*", default=default, help=help, metavar=flag.metavar)
    elif flag.name == "tta":
        group.add_argument(flag.option, nargs="?", const="flip", default=default, choices=choices, help=help)
        group.add_argument("--no-tta", dest="tta", action="store_const", const="none", default=default,
                           help="same as --tta none")
    else:
        group.add_argument(flag.option, type=flag.type, default=default, choices=choices, help=help,
                           metavar=flag.metavar)


def _scoped_help(flag, problem):
    """A flag's help, prefixed with the models it changes and the flag it depends on, if any."""
    scope = [", ".join(m for m in flag.models if m in list_models(problem))] if flag.models else []
    if flag.only_with:
        other, allowed = BY_NAME[flag.only_with[0]], flag.only_with[1]
        scope.append(f"with {other.option}" + ("" if allowed is True else f" {_either(allowed)}"))
    return (f"{'; '.join(scope)}: " if scope else "") + flag.help_for(problem) + _valid(flag)


def _valid(flag):
    """The valid values of a numeric flag, as ``--help`` ends its text with them."""
    if flag.range is None:
        return ""
    return f"; {'each ' if flag.type in (list, float_list) else ''}{flag.range}"


def in_effect(name, values):
    """Whether flag ``name`` changes the run of ``values``: always, or only with the value of another
    flag it names (:attr:`Flag.only_with`). A flag out of effect acts as its :attr:`Flag.off` value."""
    flag = BY_NAME[name]
    if flag.only_with is None:
        return True
    other, allowed = flag.only_with
    if isinstance(allowed, Range):
        return values.get(other) is not None and values.get(other) in allowed
    return values.get(other) in (allowed if isinstance(allowed, tuple) else (allowed,))


def acts_on(name, values):
    """Whether flag ``name`` changes the run of ``values``: ``values``' model is one it changes
    (:attr:`Flag.models`) and it is in effect (:func:`in_effect`)."""
    models = BY_NAME[name].models
    return (models is None or values.get("model") in models) and in_effect(name, values)


def check_typed(typed, values):
    """Refuse a flag typed with a value for a run it does not act on (:func:`acts_on`): a flag of
    other models, or one out of effect (``--momentum`` under AdamW). It would be recorded and change
    nothing. Its off value, or the one the run has anyway, is let through.

    Raises:
        UserError: naming the flag, and the model or the flag it waits on.
    """
    for name, value in typed.items():
        flag = BY_NAME.get(name)
        if flag is None or name in OF_THE_INVOCATION or acts_on(name, values) or value == flag.off:
            continue
        said = as_typed(name, value)
        if flag.models is not None and values.get("model") not in flag.models:
            raise UserError(f"{said}: a flag of {_either(flag.models)}, not of --model {values.get('model')}")
        other, allowed = flag.only_with
        wanted = "" if allowed is True else " " + _either(allowed)
        raise UserError(f"{said}: acts only with {BY_NAME[other].option}{wanted}, and this run has "
                        f"{as_typed(other, values.get(other))}")


def _either(values):
    """``a``, or ``a, b or c`` for a tuple of values."""
    if not isinstance(values, tuple):
        return str(values)
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


_GROUP_TITLES = {"runtime": "runtime", "speed": "speed",
                 "training": "training (the default of a recipe flag is that of --model's --recipe, as shown)"}


def defaults(problem, model, recipe):
    """Every flag's value before the user's: the declared defaults and ``model``'s ``recipe``.

    Raises:
        UserError: an unknown ``model`` of ``problem``.
    """
    if model not in RECIPES[problem]:
        raise UserError(f"--model {model}: not a {SCRIPTS[problem]} model (choose from "
                        f"{', '.join(RECIPES[problem])})")
    table = RECIPES[problem][model][recipe]
    values = {f.name: (table.get(f.name, f.off) if f.default == RECIPE else f.default_for(problem))
              for f in flags_of(problem)}
    return {**values, "model": model, "recipe": recipe}


def check(values, problem):
    """Refuse a value outside its flag's range or choices, in one line naming the flag.

    Raises:
        UserError: the first such flag, its value and what it takes.
    """
    for name, value in values.items():
        flag = BY_NAME.get(name)
        if flag is None or value is None and flag.default_for(problem) is None:
            continue  # (a flag whose default is none)
        if value is None or not _of_type(flag, value):  # only an edited args.json gets here
            raise UserError(f"{flag.option}: {json.dumps(value, default=str)} is not {_KINDS[flag.type]}")
        choices = flag.choices_for(problem)
        if choices and value not in choices:
            raise UserError(f"{flag.option} {value}: choose from {', '.join(choices)}")
        if flag.range is None:
            continue
        numbers = value if isinstance(value, list) else [value]
        if all(v in flag.range for v in numbers):
            continue
        if isinstance(value, list):
            raise UserError(f"{flag.option}: every {flag.what.split(' ', 1)[1]} must be {flag.range} "
                            f"(got {' '.join(words(flag.name, value)[1:])})")
        if flag.range.low == 0 and flag.range.high is None:
            raise UserError(f"{flag.option} must be {flag.range} (got {value})")
        raise UserError(f"{flag.option} {value}: {flag.what} {flag.range}")
    for flag in FLAGS:  # a preset's option asked of another preset (both among the values checked)
        if not flag.refused_elsewhere or values.get(flag.name, flag.off) == flag.off:
            continue
        other, allowed = flag.only_with
        if other in values and not in_effect(flag.name, values):
            raise UserError(f"{' '.join(words(flag.name, values[flag.name]))}: an option of "
                            f"{BY_NAME[other].option} {_either(allowed)}, not of {values.get(other)}")
    if values.get("opt") == "sgd" and values.get("nesterov") and not values.get("momentum"):
        raise UserError(f"--nesterov: Nesterov momentum needs a --momentum above 0 (got {values.get('momentum')})")
    for name in ("scale_range", "resized_crop"):
        bounds = values.get(name)
        if bounds is not None and (len(bounds) != 2 or bounds[0] > bounds[1]):
            raise UserError(f"{BY_NAME[name].option} {','.join(map(str, bounds))}: give LO,HI with LO at most HI")
    bad = [e for e in values.get("save_epochs") or () if not 1 <= e <= values["epochs"]]
    if bad:
        raise UserError(f"--save-epochs {bad[0]}: not an epoch of this run (1 to {values['epochs']})")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", float_list: "a list of numbers",
          list: "a list of integers", Path: "a path", str: "a word"}


def _of_type(flag, value):
    """Whether ``value`` has the type ``flag`` takes (an ``args.json`` may hold anything)."""
    def number(v, kind):
        return isinstance(v, kind) and not isinstance(v, bool)

    if flag.type is bool:
        return isinstance(value, bool)
    if flag.type in (int, float):
        return number(value, int if flag.type is int else (int, float))
    if flag.type in (list, float_list):
        return isinstance(value, list) and all(number(v, int if flag.type is list else (int, float)) for v in value)
    return isinstance(value, (str, Path))


def to_json(values):
    """``values`` as ``args.json`` holds them (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


def from_json(saved):
    """A run's ``args.json`` (or a checkpoint's ``args``) as values: the declared flags, paths as paths."""
    return {k: (Path(v) if BY_NAME[k].type is Path and v is not None else v)
            for k, v in saved.items() if k in BY_NAME}


def earlier_run(saved, typed, problem):
    """The flags of an earlier run (its ``args.json``: ``--resume``'s or ``--config``'s) as the layer
    under those ``typed`` anew: ``problem``'s declared flags but those of its invocation
    (:data:`OF_THE_INVOCATION`), and but its snapshots when ``--epochs`` is typed (a new length has
    snapshots of its own)."""
    skip = OF_THE_INVOCATION | ({"save_epochs"} if "epochs" in typed else set())
    return {k: v for k, v in from_json(saved).items() if k not in skip and problem in BY_NAME[k].problems}


def words(name, value):
    """One flag and its value as command-line words: the one writer of flags back to text.

    ``--x``/``--no-x`` for a switch, a list of numbers as one comma-separated word (``--save-epochs``
    as one word each), anything else as ``str`` (a float round-trips exactly). ``None`` writes nothing.
    """
    flag = BY_NAME[name]
    if value is None:
        return []
    if flag.type is bool:
        return [flag.option if value else "--no-" + flag.option[2:]]
    if flag.type is list:
        return [flag.option, *map(str, value)]
    if isinstance(value, (list, tuple)):
        return [flag.option, ",".join(map(str, value))]
    return [flag.option, str(value)]


def as_typed(name, value):
    """A flag's value as it would be typed (``--no-pretrained``, ``--lr 0.1``), or ``no --flag`` for none."""
    return " ".join(words(name, value)) or f"no {BY_NAME[name].option}"


def command(problem, values, *, output_dir, config=None):
    """The command that reruns the run of ``values`` into ``output_dir``, as words.

    With ``config`` (the run's ``args.json``): ``SCRIPT --config CONFIG --output-dir OUTPUT_DIR``,
    exact whatever the recipes become. Without: the script, ``--model``, ``--recipe``, and every
    flag whose value differs from what those two give, so that the line shows what the run changed.
    Parsed by the script's own parser, both give back ``values`` (but the folder).
    """
    head = [f"python3 {SCRIPTS[problem]}"]
    if config is not None:
        return head + words("config", config) + words("output_dir", output_dir)
    base = defaults(problem, values["model"], values["recipe"])
    base["save_epochs"] = default_save_epochs(values["epochs"])
    out = head + words("model", values["model"]) + words("recipe", values["recipe"])
    for flag in flags_of(problem):
        name = flag.name
        if name in {"model", "recipe", *_NOT_REPRODUCED} or name not in values or values[name] == base.get(name):
            continue
        out += words(name, values[name])
    return out + words("output_dir", output_dir)


def describe(problem):
    """The recipes of ``problem`` as lines for ``--help``: each reference recipe's flags, and what
    each strong recipe changes, written as :func:`words` writes them."""
    lines = ["recipes (--recipe; what the flags marked 'recipe' default to):"]
    for model, recipes in RECIPES[problem].items():
        lines.append(f"  {model} reference: " + " ".join(
            w for k, v in recipes["reference"].items() for w in words(k, v)))
        lines.append(f"  {model} strong:    " + " ".join(
            w for k, v in recipes["strong"].items() if recipes["reference"].get(k, BY_NAME[k].off) != v
            for w in words(k, v)))
    return "\n".join(lines)


def shown_default(problem, values, name):
    """A flag's default as ``--help`` shows it: ``values`` are :func:`defaults` of the model and recipe
    asked for (``None`` when the flag has no value by default, or its help says how it is chosen)."""
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, Path):
        value = value.relative_to(REPO) if value.is_relative_to(REPO) else value
    if BY_NAME[name].type is bool:
        return "on" if value else "off"
    return " ".join(words(name, value)[1:])


class DefaultsFormatter(HelpFormatter):
    """``--help`` with each flag's default as :func:`defaults` gives it for the model and recipe
    asked for (``shown``), and, for a recipe flag, which recipe that is."""

    def __init__(self, prog, *, problem, shown):
        super().__init__(prog)
        self.problem, self.shown = problem, shown

    def _get_help_string(self, action):
        flag = BY_NAME.get(action.dest)
        if flag is None or action.option_strings[0] == "--no-tta":
            return action.help
        text = shown_default(self.problem, self.shown, flag.name)
        if text is None:
            return action.help
        source = f" for {self.shown['model']} {self.shown['recipe']}" if flag.default == RECIPE else ""
        resumed = "" if flag.name in OF_THE_INVOCATION else ", or the resumed run's"
        return f"{action.help} (default: {text}{source}{resumed})"


def ablations(problem, model):
    """``{part: words}``: for each part of ``model``'s strong recipe (:data:`config.recipes.PARTS`), the
    command-line words that set it back to the reference recipe's values, given after ``--recipe strong``."""
    reference = defaults(problem, model, "reference")
    return {part: [w for key in keys for w in words(key, reference[key])]
            for part, keys in PARTS[problem][model].items()}


def runtime_parser(*names, from_run=False):
    """A parent parser of some declared flags (``device``, ``amp``, ``progress``, ``compile``,
    ``tta``, ``tta_scales``) for a script that does not train (inference, figures, the demo), each
    with its declared default, or, with ``from_run``, ``tta`` and ``tta_scales`` defaulting to
    ``None``: the checkpoint's run's."""
    parser = argparse.ArgumentParser(add_help=False)
    groups = {}
    for name in names:
        flag = BY_NAME[name]
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        from_recipe = flag.default == RECIPE
        help = flag.help_for(None) + _valid(flag) + ("; default: as the checkpoint's run validated"
                                                     if from_recipe and from_run else "")
        _add(groups[flag.group], flag, default=None if from_recipe else flag.default_for(None), help=help,
             choices=flag.choices)
    return parser


def inference_parser(problem):
    """The flags of ``problem``'s grading inference: the runtime ones, ``--checkpoint`` and its own
    ``--batch-size``."""
    names = ("device", "amp", "progress", "compile", "tta") + (("tta_scales",) if problem == "p2" else ())
    parser = argparse.ArgumentParser(add_help=False, parents=[runtime_parser(*names, from_run=True)])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / f"{problem}_best.pth",
                        help="trained checkpoint (best.pth of a run)")
    parser.add_argument("--batch-size", type=int, default={"p1": 256, "p2": 4}[problem],
                        help="images per forward pass (halved automatically when the GPU runs out of memory)")
    return parser


def report_parser(problem):
    """The flags of a figure script of ``problem``: the run, its validation folder, the output."""
    parser = argparse.ArgumentParser(add_help=False, parents=[runtime_parser("device", "amp", "progress")])
    parser.add_argument("--run", type=Path, required=True, help=f"a {SCRIPTS[problem]} run folder")
    parser.add_argument("--val-dir", type=Path, default=None,
                        help="labelled validation folder (default: the run's own --val-dir)")
    parser.add_argument("--out", type=Path, default=REPO / "report", help="folder for the PNGs")
    return parser


def default_save_epochs(epochs):
    """The first, middle (n/2) and last epoch: the report's t-SNE and mask figures need these."""
    return sorted({1, max(1, epochs // 2), epochs})
