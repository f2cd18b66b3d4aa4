"""Reading training runs for the report: snapshots, metrics, the commands that rerun them, and how
several runs of one problem compare. The run folder's files are :mod:`utils.run_folder`'s, the
flags :mod:`config.flags`'."""
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from config import flags
from datasets.folder import list_files
from datasets.p2 import image_id
from utils.errors import UserError
from utils.io import check_writable
from utils.checkpoint import PROBLEM_NAMES
from utils.run_folder import ARGS, METRIC_OF, RunFolder
from utils.runtime import resolve_amp, resolve_device

DEFAULT_TILE_IDS = ("0013", "0062", "0104")  # the report's mask figures (the seed's choice)


def check_run(folder, flag, problem=None):
    """``folder`` as a Path, refusing one that holds no run, or, given ``problem`` (``"p1"`` or
    ``"p2"``), a run of the other problem (:meth:`utils.run_folder.RunFolder.check`)."""
    RunFolder(folder).check(flag, problem)
    return Path(folder)


def snapshots(folder, flag):
    """``{epoch: path}`` of a run's ``epoch_NNN.pth`` files."""
    found = RunFolder(folder).snapshots()
    if not found:
        raise UserError(f"{flag} {folder}: no epoch_NNN.pth snapshots (train with --save-epochs, "
                        "whose default keeps the first, middle and last epoch)")
    return found


def first_middle_last(epochs):
    """The first, the one nearest the middle, and the last of some epochs (distinct, sorted)."""
    epochs = sorted(epochs)
    middle = min(epochs, key=lambda e: (abs(e - (epochs[0] + epochs[-1]) / 2), e))
    return sorted({epochs[0], middle, epochs[-1]})


def rerun_commands(folder, problem):
    """The two commands that rerun the run in ``folder`` into ``<folder>-rerun``: the exact one (the
    run's ``args.json`` as ``--config``) and the short one a person reads (``--model``, ``--recipe``
    and the flags that differ from that recipe), as text; ``[]`` without an ``args.json``."""
    run = RunFolder(folder)
    saved = run.read_args()
    if saved is None:
        return []
    out = Path(f"{Path(folder).absolute()}-rerun")  # the run's own folder holds it already
    values = flags.from_json(saved)
    return [" ".join(flags.command(problem, values, output_dir=out, config=run.path.absolute() / ARGS)),
            " ".join(flags.command(problem, values, output_dir=out))]


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
    saved = RunFolder(run).read_args() or {}
    return Path(given or saved.get("val_dir") or flags.BY_NAME["val_dir"].default_for(problem))


def default_tile_ids(val_dir, flag):
    """The report's tiles when ``val_dir`` has them all, else its first three, with a warning
    that names ``flag``, the option that chooses others in the script at hand."""
    if all((Path(val_dir) / f"{i}_sat.jpg").is_file() for i in DEFAULT_TILE_IDS):
        return list(DEFAULT_TILE_IDS)
    ids = [image_id(p) for p in list_files(val_dir, ".jpg")[:3]]
    warnings.warn(f"{val_dir} lacks tiles {', '.join(DEFAULT_TILE_IDS)}; showing {', '.join(ids)} "
                  f"(choose with {flag})")
    return ids


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
        problem: the runs' problem, as a title names it (``Problem 1``).
    """

    metric: str
    rows: list
    differing: list
    records: dict = field(repr=False)
    problem: str = ""


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
    seen, metrics = {}, []
    for folder in folders:
        metrics.append(RunFolder(folder).check(flag))
        if folder.resolve() in seen:
            raise UserError(f"{flag}: {folder} is the same run as {seen[folder.resolve()]}")
        seen[folder.resolve()] = folder
    records = [RunFolder(f).read_metrics() for f in folders]
    problem_of = {m: PROBLEM_NAMES[p] for p, m in METRIC_OF.items()}
    for folder, metric in zip(folders, metrics):
        if metric != metrics[0]:
            raise UserError(f"{flag}: {folders[0]} is a {problem_of[metrics[0]]} run (val_{metrics[0]}) and {folder} "
                            f"a {problem_of[metric]} run (val_{metric}); compare runs of one problem")
    metric = metrics[0]
    args = [RunFolder(f).read_args() for f in folders]
    differing = differing_keys([a for a in args if a is not None])
    # Folder names label the runs, unless two share one (runs/seed0/vgg13, runs/seed1/vgg13).
    names = [f.name for f in folders]
    labels = names if len(set(names)) == len(names) else [str(f) for f in folders]
    rows = []
    for label, folder, recs, run_args in zip(labels, folders, records, args):
        best = max(recs, key=lambda r: r[f"val_{metric}"])  # the first of equals, as the trainer keeps
        shown = "args.json missing" if run_args is None else ", ".join(
            flag_text(key, run_args.get(key, _MISSING)) for key in differing)
        rows.append({"run": label, "folder": str(folder), "epochs": len(recs), "best": best[f"val_{metric}"],
                     "best_epoch": best["epoch"], "last": recs[-1][f"val_{metric}"], "flags": shown})
    return Comparison(metric, rows, differing, dict(zip(labels, records)), problem_of[metric])


def differing_keys(all_args):
    """The recipe flags (:data:`config.flags.COMPARED`) whose values in some ``args.json`` dicts are
    not all equal: not where the runs computed, nor their bookkeeping."""
    keys = sorted({k for a in all_args for k in a} & flags.COMPARED)
    return [k for k in keys if any(a.get(k, _MISSING) != all_args[0].get(k, _MISSING) for a in all_args)]


def flag_text(key, value):
    """A flag's value as the comparison table shows it: as a command line writes it
    (:func:`config.flags.words`: ``--lr 0.1``, ``--no-pretrained``), or that a run lacks it."""
    if value is _MISSING:
        return f"{flags.BY_NAME[key].option} missing"
    if value is None:
        return f"{flags.BY_NAME[key].option} unset"  # not "none", which --tta takes as a value of its own
    return " ".join(flags.words(key, flags.from_json({key: value})[key]))


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
