"""Benchmark: --recipe reference against --recipe strong, side by side, graded by the grading scripts.

Usage:
    python3 benchmarks/recipes.py --problem p1 [--epochs 10] [--seeds 0 1 2] [--device cpu]
    python3 benchmarks/recipes.py --problem p2 [--epochs 6] [--seeds 0 1] [--models fcn32s deeplabv3]
    python3 benchmarks/recipes.py --problem p1 --ablate --work-dir bench/digits   # strong without each part
    python3 benchmarks/recipes.py --data --problem all --work-dir bench/course     # the course data (hw1_data)
    python3 benchmarks/recipes.py --data hw1_data --problem p1 --models beit --ablate --seeds 0 \\
        --pretrained-file beit=weights/beit.pth --work-dir bench/course            # again later: it continues
    python3 benchmarks/recipes.py --data hw1_data --models beit --vary lr=1e-5,2e-5,5e-5 --seeds 0 \\
        --work-dir bench/beit-lr                                                   # a sweep of one flag

Offline proxies (the default). Problem 1: scikit-learn's bundled handwritten digits (1,797 real
scans), split per class into training (60%), selection (20%: validation, which picks best.pth) and
a held-out test set (20%) that neither training nor selection sees. Problem 2: procedural tiles
(datasets/synthetic.py), training / selection / held-out, every model from random weights (the
pretrained weights are out of reach offline). Each recipe trains for the same epochs at the same
batch (the same training compute), on every seed.

The course data (--data DIR, the folder hw1_download.sh --data fills: p1_data/train_50, val_50 and
p2_data/train, validation): training on the training folder, best.pth picked on validation, and
the figure is the grading scripts' output on validation. Every recipe keeps its own epochs and
pretrained weights unless --epochs, --batch-size or --pretrained-file say otherwise.

In both, best.pth of every run grades a folder through p1_inference.py / p2_inference.py (with
the TTA its run validated with): Problem 1's figure is the accuracy of the CSV, Problem 2's the
mIoU of mean_iou_evaluate.py on the masks. --ablate adds, for every model, the strong recipe with
each of its parts (config.recipes.PARTS) set back to the reference, and with each part tried and
left out of it (config.recipes.CANDIDATES), on every seed or the first --ablate-seeds.

Runs live in <work dir>/runs/<problem>/<model>/<variant>/seed<N>/ (variant reference, strong,
strong-without-<part>, strong-with-<part>, or a sweep's strong-lr=2e-5): flags.json (the data and
the training flags) when it starts, result.json (the same, its selection and graded figures,
seconds) once graded. A later call with the same work dir skips the runs that have a result.json,
continues those holding last.pth only (--resume), and trains the rest, so an interrupted benchmark
resumes run by run; a run folder made with other settings (say another --epochs) is refused, never
mixed in. The end is one Markdown table (model, variant, figure per seed, mean, difference from
strong or from the reference), printed and written to --markdown after a line with the command,
epochs and batch.

--vary FLAG=V1,V2,... is a sweep instead: for every model, one training flag (as config.flags
declares it: lr, batch-size, ema, ...) set to each value after --recipe (strong unless it says
reference), on every seed, graded as above; variant "strong lr=2e-5", folder strong-lr=2e-5, resumed
the same way. A switch takes on/off (or true/false); the values of a flag that is itself a list of
numbers (--tta-scales, --scale-range) are separated by ':' (tta-scales=1:0.75,1,1.25). The table has a
row per model and value, its difference taken from the first value's row, and its header names the
recipe's own value; the first seed's run of every value goes on one compare figure
(figures.plots.plot_compare, as make_report.py --compare draws it: validation curve per epoch and
training loss) beside --markdown, whose default is then <work dir>/sweep.md (so sweep.png).
"""
import argparse
import contextlib
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import mean_iou_evaluate  # noqa: E402
from figures.plots import plot_compare  # noqa: E402
from figures.runs import compare_runs  # noqa: E402
from datasets.digits import write_digits  # noqa: E402
from datasets.p1 import csv_accuracy  # noqa: E402
from datasets.synthetic import write_tiles  # noqa: E402
from config import flags as config_flags, recipes  # noqa: E402
from utils.args import check_positive, float_list, make_parser  # noqa: E402
from utils.errors import Interrupted, UserError, run_cli  # noqa: E402
from utils.io import atomic_write, check_writable, write_json  # noqa: E402
import p1_inference  # noqa: E402
import p1_train  # noqa: E402
import p2_inference  # noqa: E402
import p2_train  # noqa: E402

PROXY_MODELS = {"p1": ["vgg13"], "p2": ["fcn32s", "deeplabv3"]}
COURSE_MODELS = {"p1": ["vgg13", "beit"], "p2": ["fcn32s", "deeplabv3"]}
PROXY_EPOCHS = {"p1": 10, "p2": 6}
PROXY_TILES, PROXY_TILE_SIZE = (48, 16, 16), 128
# The course layout below --data (RECIPES.md): the training folder, then validation.
COURSE_FOLDERS = {"p1": ("p1_data/train_50", "p1_data/val_50"), "p2": ("p2_data/train", "p2_data/validation")}
METRIC = {"p1": "accuracy", "p2": "mIoU"}
SELECTION_KEY = {"p1": "best_val_acc", "p2": "best_val_miou"}


def pretrained_file(text):
    """``MODEL=PATH`` of --pretrained-file, as ``(model, Path)``."""
    model, sep, path = text.partition("=")
    if not sep or not model or not path:
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH, got {text!r}")
    return model, Path(path)


def get_args_parser():
    models = sorted({m for problem in recipes.PARTS.values() for m in problem})
    p = make_parser(__doc__, [])
    p.add_argument("--problem", choices=["p1", "p2", "all"], default="p1",
                   help="which problem's recipes to compare; all (both, one command) only with --data")
    p.add_argument("--models", nargs="+", default=None, choices=models, metavar="MODEL",
                   help=f"models to compare, from {', '.join(models)} (default: vgg13 for p1, fcn32s and deeplabv3 "
                        "for p2 on the proxies; vgg13 and beit, fcn32s and deeplabv3 with --data)")
    p.add_argument("--data", type=Path, nargs="?", const=REPO / "hw1_data", default=None, metavar="DIR",
                   help="run on the course data in DIR (holding p1_data/train_50, val_50 and p2_data/train, "
                        "validation; DIR defaults to hw1_data in the repository) instead of the offline proxies")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for every recipe (default: 10 for p1 and 6 for p2 on the proxies; each recipe's "
                        "own with --data)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch for every recipe (default: the recipes' own, equal for reference and strong)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="a run of every variant for each seed (--seed of the training scripts)")
    p.add_argument("--ablate", action="store_true",
                   help="also train, for every model, the strong recipe with each of its parts set back to the "
                        "reference (config.recipes.PARTS; one row per part) and with each part tried and left out "
                        "of it (config.recipes.CANDIDATES)")
    p.add_argument("--ablate-seeds", type=int, default=None, metavar="N",
                   help="with --ablate: run those rows on the first N seeds only (their differences are then "
                        "taken over those seeds); default: every seed")
    p.add_argument("--vary", default=None, metavar="FLAG=V1,V2,...",
                   help="instead of reference against strong: a sweep of one training flag (lr, batch-size, ema, "
                        "tta, ...; a switch takes on/off), one run per value and seed on --recipe, one table row "
                        "per model and value (its difference from the first value), and the first seed's runs on "
                        "one compare figure beside --markdown; values of a list flag (tta-scales) are separated "
                        "by ':'")
    p.add_argument("--recipe", default=None, choices=recipes.RECIPE_NAMES,
                   help="with --vary: the recipe whose flag it varies (default: strong)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where to train and grade (default: cpu on the proxies; auto, CUDA when there is one, "
                        "with --data)")
    p.add_argument("--pretrained-file", type=pretrained_file, action="append", default=None, metavar="MODEL=PATH",
                   help="with --data: MODEL's runs load their pretrained weights from PATH instead of downloading "
                        "them (repeat for several models)")
    p.add_argument("--tile-size", type=int, default=None,
                   help=f"p2 proxies: size of the procedural tiles (default: {PROXY_TILE_SIZE})")
    p.add_argument("--tiles", type=int, nargs=3, default=None, metavar=("TRAIN", "SELECT", "TEST"),
                   help="p2 proxies: procedural tiles for training, selection and the held-out test "
                        f"(default: {' '.join(map(str, PROXY_TILES))})")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep the data, the runs and their result.json here, and continue a benchmark left "
                        "unfinished there (required with --data; default on the proxies: a new temporary folder)")
    p.add_argument("--markdown", type=Path, default=None,
                   help="write the command line and the table here (default: <work dir>/recipes.md, or "
                        "<work dir>/sweep.md with --vary, its figure beside it as sweep.png)")
    return p


@dataclass(frozen=True)
class Data:
    """The folders of one problem: training, selection (picks best.pth), and the one graded."""

    name: str  # stands for the folders in result.json: the course data, or the proxy and its settings
    train: Path
    select: Path
    graded: Path
    label: str  # what the graded figure is, for the lines and the table


@dataclass(frozen=True)
class Run:
    """One training run of the benchmark: a model, a variant of its recipe, a seed."""

    problem: str
    model: str
    variant: str  # "reference", "strong", "strong without <part>", "strong with <candidate part>" or "strong lr=2e-5"
    seed: int
    extra: tuple = ()  # the ablation's, candidate's or sweep's flags, after --recipe

    def folder(self, work):
        return work / "runs" / self.problem / self.model / self.variant.replace(" ", "-") / f"seed{self.seed}"


# The training flags this benchmark sets itself, and its option that does (a sweep leaves them alone).
SET_BY_THE_BENCHMARK = {"model": "--models", "recipe": "--recipe", "seed": "--seeds", "device": "--device",
                        "train_dir": "--data", "val_dir": "--data", "pretrained_file": "--pretrained-file",
                        "tile_size": "--tile-size"}
SWITCH_WORDS = {"on": True, "true": True, "off": False, "false": False}
NUMBER_KINDS = {int: "an integer", float: "a number", float_list: "comma-separated numbers"}


@dataclass(frozen=True)
class Sweep:
    """What --vary asks for: one declared training flag, on one recipe, at some values."""

    name: str  # the flag's declared name (config.flags.BY_NAME)
    recipe: str
    labels: tuple  # the values as typed (a switch's as on/off): they name the variants and their folders
    values: tuple  # the values as the flag's type parses them

    def variants(self):
        """``[(variant, flags after --recipe)]``, one per value in the order given, each value written
        back by :func:`config.flags.words`, so the run parses exactly that value."""
        return [(f"{self.recipe} {self.name}={label}", tuple(config_flags.words(self.name, value)))
                for label, value in zip(self.labels, self.values)]


def parse_vary(text, plan, args):
    """--vary ``text`` (``FLAG=V1,V2,...``) as a :class:`Sweep` on ``args.recipe``, for the models of ``plan``.

    Raises:
        UserError: not ``FLAG=...``; no training flag, or one this benchmark sets itself, one that changes
            no number of a run, one of another problem or of other models than ``plan``'s, or one set by
            --epochs or --batch-size too; fewer than two values, an empty, unparsable, refused (range,
            choices: :func:`config.flags.check`) or repeated value.
    """
    name, sep, listed = text.partition("=")
    key = name.strip().lstrip("-").replace("-", "_")
    where = f"--vary {text}"
    if not sep or not key:
        raise UserError(f"{where}: expected FLAG=V1,V2,... (such as lr=1e-5,2e-5)")
    flag = config_flags.BY_NAME.get(key)
    if flag is None:
        raise UserError(f"{where}: {name} is no training flag (p1_train.py --help and p2_train.py --help list them)")
    if key in SET_BY_THE_BENCHMARK:
        raise UserError(f"{where}: the benchmark sets {flag.option} of every run itself; use its "
                        f"{SET_BY_THE_BENCHMARK[key]}")
    if flag.role == config_flags.RECORD:
        raise UserError(f"{where}: {flag.option} changes no number of a run; vary a flag of the recipe")
    for problem, models in plan.items():
        if problem not in flag.problems:
            scripts = " and ".join(config_flags.SCRIPTS[p] for p in flag.problems)
            raise UserError(f"{where}: {flag.option} is a flag of {scripts}, not of {config_flags.SCRIPTS[problem]} "
                            f"({', '.join(models)})")
        for model in models:
            if flag.models and model not in flag.models:
                raise UserError(f"{where}: {flag.option} changes only {', '.join(flag.models)}, not {model} "
                                "(choose the models with --models)")
            recipe = config_flags.defaults(problem, model, args.recipe)
            if not config_flags.in_effect(key, recipe):
                other = flag.only_with[0]
                raise UserError(f"{where}: {flag.option} does not act on {model}'s {args.recipe} recipe, which has "
                                f"{' '.join(config_flags.words(other, recipe[other]))} (--help names what it acts "
                                "with)")
    if args.data is None and "pretrained" in (key, (flag.only_with or (None,))[0]):
        acts = "" if key == "pretrained" else f", and {flag.option} acts only on pretrained ones"
        raise UserError(f"{where}: on the proxies every model starts from random weights{acts} (add --data)")
    if key in ("epochs", "batch_size") and getattr(args, key) is not None:
        raise UserError(f"{where}: {flag.option} is given too; drop it, --vary sets it for each run")
    labels = tuple(label.strip() for label in listed.split(":" if flag.type is float_list else ","))
    if labels == ("",):
        raise UserError(f"{where}: no values (give at least two, such as {key}=A,B)")
    if "" in labels:
        raise UserError(f"{where}: an empty value among them")
    values = tuple(_parse_value(flag, label, where) for label in labels)
    for value in values:
        for problem in plan:
            try:
                config_flags.check({key: value}, problem)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
    for i, value in enumerate(values):
        if value in values[:i]:
            raise UserError(f"{where}: {labels[i]} is the value of {labels[values.index(value)]} again")
    if len(values) < 2:
        raise UserError(f"{where}: one value; give at least two to compare")
    if flag.type is bool:  # on and true are one setting: one name, one folder
        labels = tuple("on" if value else "off" for value in values)
    return Sweep(key, args.recipe, labels, values)


def _parse_value(flag, label, where):
    """One value of --vary as ``flag``'s type parses it: a switch's on/off, a finite number, or the word."""
    if flag.type is bool:
        if label.lower() not in SWITCH_WORDS:
            raise UserError(f"{where}: {label}: {flag.option} is a switch; give on/off or true/false")
        return SWITCH_WORDS[label.lower()]
    if flag.type not in NUMBER_KINDS:
        return label  # a word: config.flags.check holds it against the flag's choices
    try:
        value = flag.type(label)
    except (ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{where}: {label} is not {NUMBER_KINDS[flag.type]}") from None
    if not all(math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
        raise UserError(f"{where}: {label} is not a finite number")
    return value


def command_line(parser, args):
    """The command that reproduces ``args`` (every flag that differs from its default)."""
    words = ["python3", "benchmarks/recipes.py"]
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            words.append(flag)
        elif action.dest == "pretrained_file":
            words += [word for model, path in value for word in (flag, f"{model}={path}")]
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def check_args(args):
    """Refuse flags that do not go together, and fill the defaults of the mode (in place).

    Returns:
        ``{problem: [models]}``, in the order the runs train.
    """
    course = args.data is not None
    args.pretrained_file = args.pretrained_file or []
    if args.vary is None and args.recipe is not None:
        raise UserError(f"--recipe {args.recipe} chooses the recipe of a sweep: add --vary FLAG=V1,V2,... "
                        "(without it the benchmark runs both recipes)")
    if args.vary is not None and args.ablate:
        raise UserError("--vary and --ablate are two benchmarks; run them as two commands (one --work-dir serves both)")
    check_positive(args, "epochs", "batch_size", "tile_size", "ablate_seeds")
    if args.tiles is not None and min(args.tiles) < 1:
        raise UserError(f"--tiles {' '.join(map(str, args.tiles))}: every count must be positive")
    twice = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if twice:
        raise UserError(f"--seeds: seed {twice[0]} given twice")
    if args.problem == "all" and not course:
        raise UserError("--problem all runs both problems on the course data: add --data")
    if course:
        if args.work_dir is None:
            raise UserError("--data needs --work-dir: runs on the course data take hours, and the benchmark "
                            "continues them from there")
        given = [flag for flag, value in (("--tiles", args.tiles), ("--tile-size", args.tile_size)) if value]
        if given:
            raise UserError(f"{given[0]} sets the procedural tiles of the proxies; it does not go with --data")
    elif args.pretrained_file:
        raise UserError("--pretrained-file goes with --data: on the proxies every model starts from random weights")
    problems = ["p1", "p2"] if args.problem == "all" else [args.problem]
    if args.models:
        plan = {problem: [m for m in args.models if m in recipes.PARTS[problem]] for problem in problems}
        stray = [m for m in args.models if not any(m in models for models in plan.values())]
        if stray:
            raise UserError(f"--models {stray[0]}: not a model of {' or '.join(problems)} "
                            f"(choose from {', '.join(m for p in problems for m in recipes.PARTS[p])})")
        plan = {problem: models for problem, models in plan.items() if models}
    else:
        plan = {problem: (COURSE_MODELS if course else PROXY_MODELS)[problem] for problem in problems}
    compared = {m for models in plan.values() for m in models}
    for model, path in args.pretrained_file:
        if model not in compared:
            raise UserError(f"--pretrained-file {model}={path}: {model} is not among the models compared "
                            f"({', '.join(sorted(compared))})")
    if course:
        args.data = args.data.absolute()
        for problem in plan:
            for sub in COURSE_FOLDERS[problem]:
                if not (args.data / sub).is_dir():
                    raise UserError(f"--data {args.data}: no {sub} folder there (the course layout; "
                                    "bash hw1_download.sh --data fetches it)")
    if args.vary is not None:
        args.recipe = args.recipe or "strong"
        args.vary = parse_vary(args.vary, plan, args)
    args.device = args.device or ("auto" if course else "cpu")
    if not course and not (args.vary and args.vary.name == "epochs"):
        # Short enough for a CPU; the course data keeps each recipe's own epochs (None: not passed).
        args.epochs = args.epochs or PROXY_EPOCHS[args.problem]
    args.tiles = args.tiles or PROXY_TILES
    args.tile_size = args.tile_size or PROXY_TILE_SIZE
    return plan


def prepare_data(problem, work, args):
    """The folders of ``problem``: the course's with --data, else the proxy written under ``work``."""
    if args.data is not None:
        train, val = (args.data / sub for sub in COURSE_FOLDERS[problem])
        return Data("course data", train, val, val, f"validation {METRIC[problem]}")
    if problem == "p1":
        train, select, test = write_digits(work / "data" / "digits", val_fraction=0.2, test_fraction=0.2)
        return Data("digits", train, select, test, "held-out accuracy")
    # Named by their settings, so that other --tiles or --tile-size never mix with earlier tiles.
    n_train, n_select, n_test = args.tiles
    name = f"tiles-{args.tile_size}px-{n_train}-{n_select}-{n_test}"
    root = work / "data" / name
    return Data(name, write_tiles(root / "train", n_train, size=args.tile_size, seed=0),
                write_tiles(root / "select", n_select, size=args.tile_size, seed=1, start=5000),
                write_tiles(root / "test", n_test, size=args.tile_size, seed=2, start=9000), "held-out mIoU")


def plan_runs(problem, models, args):
    """Every run of ``problem``: per model, reference and strong on every seed, and (--ablate) strong less
    each part and strong with each candidate part, on the first --ablate-seeds seeds; or (--vary) the
    sweep's recipe at each value, on every seed."""
    runs = []
    if args.vary:
        return [Run(problem, model, name, seed, extra) for model in models for name, extra in args.vary.variants()
                for seed in args.seeds]
    for model in models:
        runs += [Run(problem, model, name, seed) for name in ("reference", "strong") for seed in args.seeds]
        if args.ablate:
            variants = [(f"strong without {part}", tuple(flags))
                        for part, flags in config_flags.ablations(problem, model).items()]
            variants += [(f"strong with {part}", tuple(flags))
                         for part, flags in recipes.CANDIDATES[problem].get(model, {}).items()]
            seeds = args.seeds[:args.ablate_seeds] if args.ablate_seeds else args.seeds
            runs += [Run(problem, model, name, seed, extra) for name, extra in variants for seed in seeds]
    return runs


def training_flags(run, data, out, args):
    """The training script's flags for ``run``, runtime flags (device, progress) left out."""
    flags = ["--model", run.model, "--recipe", run.variant.split()[0], *run.extra, "--seed", str(run.seed),
             "--train-dir", str(data.train), "--val-dir", str(data.select), "--output-dir", str(out), "--save-epochs"]
    if args.epochs:
        flags += ["--epochs", str(args.epochs)]
    if args.batch_size:
        flags += ["--batch-size", str(args.batch_size)]
    if args.data is None:
        flags += ["--no-pretrained"] + (["--tile-size", str(args.tile_size)] if run.problem == "p2" else [])
    else:
        flags += [word for model, path in args.pretrained_file if model == run.model
                  for word in ("--pretrained-file", str(path.absolute()))]
    return flags


def check_same_run(out, recorded, data, flags):
    """Refuse a run folder trained on other data or with other settings than this call gives it.

    Paths are left out of the comparison (the data's name stands for its folders), so that a work
    dir or data folder moved whole still counts as the same.
    """
    if recorded != {"data": data.name, "flags": _settings(flags)}:
        now = shlex.join(_settings(flags))
        raise UserError(f"{out}: trained on {recorded['data']} with {shlex.join(recorded['flags'])}, where this "
                        f"call gives {data.name} with {now}; remove that folder, or choose another --work-dir")


def _settings(flags):
    """``flags`` less the paths."""
    paths = {"--train-dir", "--val-dir", "--output-dir", "--pretrained-file"}
    return [f for i, f in enumerate(flags) if f not in paths and (i == 0 or flags[i - 1] not in paths)]


def grade(run, best, data, out, args):
    """The figure of ``best``: inference on the graded folder, scored as the course does."""
    if run.problem == "p1":
        csv = out / "graded.csv"
        p1_inference.main(p1_inference.get_args_parser().parse_args(
            ["--checkpoint", str(best), "--device", args.device, "--no-progress", str(data.graded), str(csv)]))
        return csv_accuracy(csv)[0]
    masks = out / "graded_masks"
    p2_inference.main(p2_inference.get_args_parser().parse_args(
        ["--checkpoint", str(best), "--device", args.device, "--no-progress", str(data.graded), str(masks)]))
    return mean_iou_evaluate.main(mean_iou_evaluate.get_args_parser().parse_args(
        ["-g", str(data.graded), "-p", str(masks)]))["miou"]


def obtain(run, data, work, args):
    """The result of ``run``: read from its result.json, or trained (fresh or continued) and graded.

    Returns:
        ``(result, done_before)``.
    """
    out = run.folder(work)
    flags = training_flags(run, data, out, args)
    done, last, recorded = out / "result.json", out / "last.pth", out / "flags.json"
    if done.exists():
        result = json.loads(done.read_text())
        check_same_run(out, {"data": result["data"], "flags": _settings(result["flags"])}, data, flags)
        return result, True
    start = time.perf_counter()
    resumed = last.exists()
    if resumed:
        if recorded.exists():
            saved = json.loads(recorded.read_text())
            check_same_run(out, {"data": saved["data"], "flags": _settings(saved["flags"])}, data, flags)
        # The checkpoint carries every other flag of the run.
        argv = ["--resume", str(last), "--device", args.device, "--no-progress"]
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(recorded, {"data": data.name, "flags": flags})
        argv = flags + ["--device", args.device, "--no-progress", "--overwrite"]
    script = p1_train if run.problem == "p1" else p2_train
    try:
        trained = script.main(script.get_args_parser().parse_args(argv))
    except Interrupted as e:
        raise Interrupted(f"{e} (or run this benchmark again: it continues every unfinished run)",
                          e.exit_code - 128) from None
    except BaseException:
        if not last.exists():  # a run that never saved leaves no folder holding only its flags.json
            recorded.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    graded_at = time.perf_counter()
    figure = grade(run, out / "best.pth", data, out, args)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    result = {"problem": run.problem, "model": run.model, "variant": run.variant, "seed": run.seed,
              "data": data.name, "flags": flags, "metric": METRIC[run.problem],
              "selection": trained[SELECTION_KEY[run.problem]], "graded": figure, "graded_dir": str(data.graded),
              "best_epoch": trained["best_epoch"], "epochs": trained["epochs"],
              "resumed": resumed, "train_seconds": sum(e["seconds"] for e in epochs),
              "grade_seconds": time.perf_counter() - graded_at, "seconds": time.perf_counter() - start}
    write_json(done, result)
    return result, False


def table_rows(runs, results, against=None):
    """One row per (model, variant): the figure per seed, its mean and the difference that row measures.

    Args:
        against: ``{variant: the variant its difference is taken from, or None}`` (a sweep's: the first
            value); default: strong's from the reference, every other's from strong.
    """
    rows = {}
    for run in runs:
        row = rows.setdefault((run.problem, run.model, run.variant), {
            "problem": run.problem, "model": run.model, "variant": run.variant, "metric": METRIC[run.problem],
            "seeds": [], "figures": []})
        row["seeds"].append(run.seed)
        row["figures"].append(results[run]["graded"])
    for row in rows.values():
        row["mean"] = statistics.mean(row["figures"])
    for (problem, model, variant), row in rows.items():
        if against is None:
            versus = None if variant == "reference" else "reference" if variant == "strong" else "strong"
        else:
            versus = against[variant]
        row["against"] = versus
        if versus is not None:
            # Over the seeds this row ran (an ablation may run on fewer seeds than strong).
            other = rows[(problem, model, versus)]
            base = [f for s, f in zip(other["seeds"], other["figures"]) if s in row["seeds"]]
            row["difference"] = row["mean"] - statistics.mean(base)
        else:
            row["difference"] = None
    return list(rows.values())


def markdown(rows, seeds):
    lines = ["| model | variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | difference |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for row in rows:
        diff = "" if row["against"] is None else f"{row['difference']:+.4f} vs {row['against']}"
        figures = dict(zip(row["seeds"], row["figures"]))
        cells = [f"{figures[s]:.4f}" if s in figures else "" for s in seeds]
        lines.append(f"| {row['model']} | {row['variant']} | " + " | ".join(cells) + f" | {row['mean']:.4f} | {diff} |")
    return "\n".join(lines)


def header(command, plan, data, args):
    """The line above the table: the command, and per problem its epochs, batch and figure."""
    parts = []
    sweep = args.vary
    for problem, models in plan.items():
        # Reference and strong share epochs and batch (RECIPES): one figure per model.
        own = {key: ", ".join(f"{m} {recipes.RECIPES[problem][m]['reference'][key]}" for m in models)
               for key in ("epochs", "batch_size")}
        epochs = f"{args.epochs} epochs" if args.epochs else f"epochs {own['epochs']} (each recipe's own)"
        batch = f"batch {args.batch_size}" if args.batch_size else f"batch {own['batch_size']}"
        if sweep is None:
            settings = f"{epochs}, {batch}, the same for every variant"
        else:
            settings = ", ".join(text for key, text in (("epochs", epochs), ("batch_size", batch)) if key != sweep.name)
            own_values = {m: config_flags.defaults(problem, m, sweep.recipe) for m in models}
            recipe_own = ", ".join(f"{m} {config_flags.shown_default(problem, values, sweep.name) or 'unset'}"
                                   for m, values in own_values.items())
            settings += (f", the same for every value; --vary {sweep.name} on the {sweep.recipe} recipe (its own: "
                         f"{recipe_own}), each difference from {sweep.name}={sweep.labels[0]}")
        parts.append(f"{problem}: {settings}; figure: {data[problem].label} ({data[problem].graded})")
    return f"`{command}` -- " + "; ".join(parts)


def figure_paths(report, plan):
    """``{problem: PNG}`` of a sweep's compare figures, beside ``report``: one, or one per problem."""
    if len(plan) == 1:
        return {problem: report.with_suffix(".png") for problem in plan}
    return {problem: report.with_name(f"{report.stem}-{problem}.png") for problem in plan}


def draw_sweep(runs, work, paths, args):
    """The first seed's run of each value (and model) on one compare figure per problem: its selection
    curve per epoch and training loss (figures.plots.plot_compare, as make_report.py --compare draws it).

    Returns:
        ``{problem: what plot_compare returns}``.
    """
    seed, drawn = args.seeds[0], {}
    for problem, path in paths.items():
        first = [run for run in runs if run.problem == problem and run.seed == seed]
        comparison = compare_runs([run.folder(work) for run in first], "--vary")
        several = len({run.model for run in first}) > 1
        labels = [f"{run.model} {run.variant}" if several else run.variant for run in first]
        models = ", ".join(dict.fromkeys(run.model for run in first))
        title = f"{problem} {models}, {args.vary.recipe} recipe: --vary {args.vary.name}, seed {seed}"
        drawn[problem] = plot_compare(list(zip(labels, comparison.records.values())), path, metric=comparison.metric,
                                      title=title)
    return drawn


def main(args):
    command = command_line(get_args_parser(), args)
    plan = check_args(args)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="recipes-"))
    # Absolute, so that a run continued from another folder finds the paths its checkpoint recorded.
    work = work.absolute()
    check_writable(work, "--work-dir", folder=True)
    report = (args.markdown or work / ("sweep.md" if args.vary else "recipes.md")).absolute()
    check_writable(report, "--markdown")
    pictures = figure_paths(report, plan) if args.vary else {}
    for picture in pictures.values():
        check_writable(picture, "--markdown (its figure)")
    data = {problem: prepare_data(problem, work, args) for problem in plan}
    runs = [run for problem, models in plan.items() for run in plan_runs(problem, models, args)]
    width = max(len(f"{run.model} {run.variant}") for run in runs)
    results = {}
    for i, run in enumerate(runs, 1):
        results[run], before = obtain(run, data[run.problem], work, args)
        r, name = results[run], f"{run.model} {run.variant}"
        took = "(done before)" if before else f"({r['seconds']:.0f} s)"
        print(f"[{i}/{len(runs)}] {name:{width}s} seed {run.seed}: selection {r['metric']} {r['selection']:.4f}, "
              f"{data[run.problem].label} {r['graded']:.4f}  {took}", flush=True)
    against = None
    if args.vary:
        first = args.vary.variants()[0][0]
        against = {name: None if name == first else first for name, _ in args.vary.variants()}
    rows = table_rows(runs, results, against)
    text = header(command, plan, data, args) + "\n\n" + markdown(rows, args.seeds) + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    drawn = draw_sweep(runs, work, pictures, args) if args.vary else {}
    for problem, picture in pictures.items():
        text += (f"\n![{problem}: validation {METRIC[problem]} per epoch and training loss, seed {args.seeds[0]}]"
                 f"({picture.name})\n")
    print("\n" + text, end="")
    with atomic_write(report) as f:
        f.write(text)
    print(f"wrote {report}" + "".join(f" and {picture}" for picture in pictures.values()))
    return {"rows": rows, "markdown": str(report), "work_dir": str(work),
            "figures": {problem: d["path"] for problem, d in drawn.items()}}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
