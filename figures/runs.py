"""Reading training runs for the report: snapshots, metrics, the command that made them, and how
several runs of one problem compare. The run folder's layout is :mod:`training.run`'s."""
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from datasets.folder import list_files
from datasets.p2 import image_id
from models import get_model_spec, list_models, option_names
from training.recipes import DEFAULTS
from training.run import SNAPSHOT_RE
from utils.errors import UserError
from utils.io import check_writable
from utils.runtime import resolve_amp, resolve_device

DEFAULT_TILE_IDS = ("0013", "0062", "0104")  # the report's mask figures (the seed's choice)


def check_run(folder, flag, problem=None):
    """``folder`` as a Path, refusing one that holds no run (no metrics.jsonl), or, given ``problem``
    (``"p1"`` or ``"p2"``), a run of the other problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such run folder")
    if not (folder / "metrics.jsonl").is_file():
        raise UserError(f"{flag} {folder}: not a run folder (no metrics.jsonl)")
    if problem is not None:
        metric, wanted = run_metric(folder, read_metrics(folder), flag), METRICS[problem]
        if metric != wanted:
            raise UserError(f"{flag} {folder}: a {PROBLEMS[metric]} run (it logs val_{metric}); this needs a "
                            f"{PROBLEMS[wanted]} run, of {problem}_train.py")
    return folder


def snapshots(folder, flag):
    """``{epoch: path}`` of a run's ``epoch_NNN.pth`` files."""
    found = {int(m.group(1)): p for p in Path(folder).iterdir() if (m := SNAPSHOT_RE.fullmatch(p.name))}
    if not found:
        raise UserError(f"{flag} {folder}: no epoch_NNN.pth snapshots (train with --save-epochs, "
                        "whose default keeps the first, middle and last epoch)")
    return dict(sorted(found.items()))


def first_middle_last(epochs):
    """The first, the one nearest the middle, and the last of some epochs (distinct, sorted)."""
    epochs = sorted(epochs)
    middle = min(epochs, key=lambda e: (abs(e - (epochs[0] + epochs[-1]) / 2), e))
    return sorted({epochs[0], middle, epochs[-1]})


def run_arg(folder, key):
    """A flag of the run that made ``folder`` (from its ``args.json``), or ``None``."""
    path = Path(folder) / "args.json"
    return json.loads(path.read_text()).get(key) if path.is_file() else None


def read_metrics(folder):
    """The records of a run's ``metrics.jsonl``."""
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def command_line(folder, script):
    """The command that reproduces a run, rebuilt from its ``args.json``, into a new folder beside it."""
    path = Path(folder) / "args.json"
    if not path.is_file():
        return f"python3 {script} (args.json missing)"
    args = json.loads(path.read_text())
    parts = [f"python3 {script}"]
    for key, value in sorted(args.items()):
        if value is None or key in ("resume", "overwrite", "progress", "device", "amp") or not applies(args, key):
            continue
        flag = "--" + key.replace("_", "-")
        if key == "output_dir":
            value = f"{value}-rerun"  # the run's own folder holds it already: a rerun needs a new one
        if value is True:
            parts.append(flag)
        elif value is False:
            parts.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            parts.append(" ".join([flag, *map(str, value)]))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


# Flags that matter only beside another flag's value: SGD's momentum, the focal loss's numbers.
ONLY_WITH = {"momentum": ("opt", "sgd"), "focal_alpha": ("loss", "focal"), "focal_gamma": ("loss", "focal")}


def applies(args, key):
    """Whether flag ``key`` changes what the run of ``args`` (its ``args.json``) computes: not
    ``--momentum`` for AdamW, nor ``--global-pool`` for vgg13 (another model's option)."""
    if key in ONLY_WITH:
        other, value = ONLY_WITH[key]
        return args.get(other) == value
    model = args.get("model")
    if model not in list_models():
        return True
    if key in option_names():
        return key in option_names(model)
    return key != "aux_weight" or get_model_spec(model).aux_head


@dataclass
class ReportInputs:
    """What a report figure reads: the run folder, its snapshots, the validation folder, and where
    to compute."""

    run: Path
    snapshots: dict
    val_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None


def open_run(run, *, val_dir, out, device, amp, problem, run_flag="--run", val_flag="--val-dir"):
    """Check a figure's output folder, run folder and validation folder before any work, and
    resolve where it computes.

    Args:
        run: the run folder; ``val_dir``: the validation folder, or ``None`` for the run's own.
        out: the folder the figures go to.
        device, amp: the ``--device`` and ``--amp`` flags.
        problem: ``"p1"`` or ``"p2"``.
        run_flag, val_flag: the options that named ``run`` and ``val_dir``, for the messages.

    Returns:
        A :class:`ReportInputs`.
    """
    check_writable(out, "--out", folder=True)
    run = check_run(run, run_flag, problem)
    snaps = snapshots(run, run_flag)
    val_dir = val_dir_of(run, val_dir, problem)
    if not val_dir.is_dir():
        raise UserError(f"{val_flag} {val_dir}: no such folder")
    device = resolve_device(device)
    return ReportInputs(run, snaps, val_dir, device, resolve_amp(amp, device))


def val_dir_of(run, given, problem):
    """The validation folder a figure reads: ``given``, else the run's own, else the course's."""
    return Path(given or run_arg(run, "val_dir") or DEFAULTS[problem]["val_dir"])


def default_tile_ids(val_dir, flag):
    """The report's tiles when ``val_dir`` has them all, else its first three, with a warning
    that names ``flag``, the option that chooses others in the script at hand."""
    if all((Path(val_dir) / f"{i}_sat.jpg").is_file() for i in DEFAULT_TILE_IDS):
        return list(DEFAULT_TILE_IDS)
    ids = [image_id(p) for p in list_files(val_dir, ".jpg")[:3]]
    warnings.warn(f"{val_dir} lacks tiles {', '.join(DEFAULT_TILE_IDS)}; showing {', '.join(ids)} "
                  f"(choose with {flag})")
    return ids


# What a run's args.json records about where and how it computed rather than what it trained: runs
# of one recipe on other machines, folders or validation batch sizes are the same recipe.
NOT_RECIPE = ("output_dir", "resume", "overwrite", "progress", "device", "amp", "train_dir", "val_dir",
              "save_epochs", "cache_dir", "eval_batch_size")
PROBLEMS = {"acc": "Problem 1", "miou": "Problem 2"}  # a run's problem, told by the metric it logs
METRICS = {"p1": "acc", "p2": "miou"}
_MISSING = object()  # a key one run's args.json lacks (an older script's) differs from every value


@dataclass
class Comparison:
    """Several runs of one problem side by side (what ``make_report.py --compare`` reports).

    Attributes:
        metric: the validation metric the runs log (``acc`` or ``miou``).
        rows: one dict per run: ``run`` (its label), ``folder``, ``epochs``, ``best``, ``best_epoch``,
            ``last`` (the last epoch's metric) and ``flags`` (its values of the differing flags, rendered).
        differing: the ``args.json`` keys whose values are not all equal across the runs, sorted.
        records: each run's ``metrics.jsonl`` records by label, for the figure.
    """

    metric: str
    rows: list
    differing: list
    records: dict = field(repr=False)


def run_metric(folder, records, flag):
    """The validation metric a run logs (``acc`` or ``miou``); refuses a run with no epochs."""
    if not records:
        raise UserError(f"{flag} {folder}: no epochs in its metrics.jsonl yet")
    found = [m for m in PROBLEMS if f"val_{m}" in records[0]]
    if not found:
        raise UserError(f"{flag} {folder}: its metrics.jsonl has neither val_acc nor val_miou")
    return found[0]


def compare_runs(folders, flag="--compare"):
    """Read several runs of one problem into a :class:`Comparison`, refusing bad input before anything is drawn.

    Args:
        folders: the run folders: at least two, all Problem 1 or all Problem 2.
        flag: the option that named them, for the messages.
    """
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise UserError(f"{flag} needs at least two runs to compare, got only {' '.join(map(str, folders))} "
                        "(one run's figures come from --p1-run or --p2-run)")
    seen = {}
    for folder in folders:
        check_run(folder, flag)
        if folder.resolve() in seen:
            raise UserError(f"{flag}: {folder} is the same run as {seen[folder.resolve()]}")
        seen[folder.resolve()] = folder
    records = [read_metrics(f) for f in folders]
    metrics = [run_metric(f, r, flag) for f, r in zip(folders, records)]
    for folder, metric in zip(folders, metrics):
        if metric != metrics[0]:
            raise UserError(f"{flag}: {folders[0]} is a {PROBLEMS[metrics[0]]} run (val_{metrics[0]}) and {folder} "
                            f"a {PROBLEMS[metric]} run (val_{metric}); compare runs of one problem")
    metric = metrics[0]
    args = [json.loads((f / "args.json").read_text()) if (f / "args.json").is_file() else None for f in folders]
    differing = differing_keys([a for a in args if a is not None])
    # Folder names label the runs, unless two share one (runs/seed0/vgg13, runs/seed1/vgg13).
    names = [f.name for f in folders]
    labels = names if len(set(names)) == len(names) else [str(f) for f in folders]
    rows = []
    for label, folder, recs, run_args in zip(labels, folders, records, args):
        best = max(recs, key=lambda r: r[f"val_{metric}"])  # the first of equals, as the trainer keeps
        flags = "args.json missing" if run_args is None else ", ".join(
            flag_text(key, run_args.get(key, _MISSING)) for key in differing)
        rows.append({"run": label, "folder": str(folder), "epochs": len(recs), "best": best[f"val_{metric}"],
                     "best_epoch": best["epoch"], "last": recs[-1][f"val_{metric}"], "flags": flags})
    return Comparison(metric, rows, differing, dict(zip(labels, records)))


def differing_keys(all_args):
    """The keys of some ``args.json`` dicts whose values are not all equal, less :data:`NOT_RECIPE`."""
    keys = sorted({k for a in all_args for k in a} - set(NOT_RECIPE))
    return [k for k in keys if any(a.get(k, _MISSING) != all_args[0].get(k, _MISSING) for a in all_args)]


def flag_text(key, value):
    """A flag's value as the comparison table shows it: ``lr 0.1``, ``pretrained``, ``no-pretrained``."""
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return name if value else f"no-{name}"
    if value is _MISSING:
        return f"{name} missing"
    if value is None:
        return f"{name} unset"  # not "none", which --tta takes as a value of its own
    return f"{name} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def comparison_table(comparison):
    """The Markdown table of a :class:`Comparison`, one line per run."""
    m = comparison.metric
    lines = [f"| run | epochs | best val {m} | best epoch | last val {m} | differing flags |",
             "|---|---:|---:|---:|---:|---|"]
    for row in comparison.rows:
        cells = [row["run"], row["epochs"], f"{row['best']:.4f}", row["best_epoch"], f"{row['last']:.4f}",
                 row["flags"] or "-"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return lines
