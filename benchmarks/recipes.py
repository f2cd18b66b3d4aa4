"""Benchmark: --recipe reference against --recipe strong, side by side, graded by the grading scripts.

Usage:
    python3 benchmarks/recipes.py --problem p1 [--epochs 10] [--seeds 0 1 2] [--device cpu]
    python3 benchmarks/recipes.py --problem p2 [--epochs 6] [--seeds 0 1] [--models fcn32s deeplabv3]
    python3 benchmarks/recipes.py --problem p1 --ablate --work-dir bench/digits   # strong without each part
    python3 benchmarks/recipes.py --data --problem all --work-dir bench/course     # the course data (hw1_data)
    python3 benchmarks/recipes.py --data hw1_data --problem p1 --models beit --ablate --seeds 0 \\
        --pretrained-file beit=weights/beit.pth --work-dir bench/course            # again later: it continues

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
strong-without-<part> or strong-with-<part>): flags.json (the data and the training flags) when it starts, result.json
(the same, its selection and graded figures, seconds) once graded. A later call with the same work
dir skips the runs that have a result.json, continues those holding last.pth only (--resume), and
trains the rest, so an interrupted benchmark resumes run by run; a run folder made with other
settings (say another --epochs) is refused, never mixed in. The end is one Markdown table (model,
variant, figure per seed, mean, difference from strong or from the reference), printed and
written to --markdown after a line with the command, epochs and batch.
"""
import argparse
import json
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
from datasets.digits import write_digits  # noqa: E402
from datasets.p1 import csv_accuracy  # noqa: E402
from datasets.synthetic import write_tiles  # noqa: E402
from config import flags as config_flags, recipes  # noqa: E402
from utils.args import check_positive, make_parser  # noqa: E402
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
                   help="write the command line and the table here (default: <work dir>/recipes.md)")
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
    variant: str  # "reference", "strong", "strong without <part>" or "strong with <candidate part>"
    seed: int
    extra: tuple = ()  # the ablation's or candidate's flags, after --recipe strong

    def folder(self, work):
        return work / "runs" / self.problem / self.model / self.variant.replace(" ", "-") / f"seed{self.seed}"


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
    check_positive(args, "epochs", "batch_size", "tile_size")
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
    args.device = args.device or ("auto" if course else "cpu")
    if not course:
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
    each part and strong with each candidate part, on the first --ablate-seeds seeds."""
    runs = []
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


def table_rows(runs, results):
    """One row per (model, variant): the figure per seed, its mean and the difference that row measures."""
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
        against = None if variant == "reference" else "reference" if variant == "strong" else "strong"
        row["against"] = against
        if against is not None:
            # Over the seeds this row ran (an ablation may run on fewer seeds than strong).
            other = rows[(problem, model, against)]
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
    for problem, models in plan.items():
        # Reference and strong share epochs and batch (RECIPES): one figure per model.
        own = {key: ", ".join(f"{m} {recipes.RECIPES[problem][m]['reference'][key]}" for m in models)
               for key in ("epochs", "batch_size")}
        epochs = f"{args.epochs} epochs" if args.epochs else f"epochs {own['epochs']} (each recipe's own)"
        batch = f"batch {args.batch_size}" if args.batch_size else f"batch {own['batch_size']}"
        parts.append(f"{problem}: {epochs}, {batch}, the same for every variant; figure: {data[problem].label} "
                     f"({data[problem].graded})")
    return f"`{command}` -- " + "; ".join(parts)


def main(args):
    command = command_line(get_args_parser(), args)
    plan = check_args(args)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="recipes-"))
    # Absolute, so that a run continued from another folder finds the paths its checkpoint recorded.
    work = work.absolute()
    check_writable(work, "--work-dir", folder=True)
    report = (args.markdown or work / "recipes.md").absolute()
    check_writable(report, "--markdown")
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
    rows = table_rows(runs, results)
    text = header(command, plan, data, args) + "\n\n" + markdown(rows, args.seeds) + "\n"
    print("\n" + text, end="")
    report.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(report) as f:
        f.write(text)
    print(f"wrote {report}")
    return {"rows": rows, "markdown": str(report), "work_dir": str(work)}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
