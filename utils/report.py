"""Reading training runs for the report: snapshots, metrics, and the command that made them."""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import UserError
from utils.io import check_writable
from utils.recipes import DEFAULTS
from utils.runtime import resolve_amp, resolve_device

_SNAPSHOT = re.compile(r"^epoch_(\d+)\.pth$")


def check_run(folder, flag):
    """``folder`` as a Path, refusing one that holds no run (no metrics.jsonl)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such run folder")
    if not (folder / "metrics.jsonl").is_file():
        raise UserError(f"{flag} {folder}: not a run folder (no metrics.jsonl)")
    return folder


def snapshots(folder, flag):
    """``{epoch: path}`` of a run's ``epoch_NNN.pth`` files."""
    found = {int(m.group(1)): p for p in Path(folder).iterdir() if (m := _SNAPSHOT.match(p.name))}
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
    """The command that reproduces a run, rebuilt from its ``args.json``."""
    path = Path(folder) / "args.json"
    if not path.is_file():
        return f"python3 {script} (args.json missing)"
    args = json.loads(path.read_text())
    parts = [f"python3 {script}"]
    for key, value in sorted(args.items()):
        if value is None or key in ("resume", "overwrite", "progress", "device", "amp"):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is False:
            parts.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            parts.append(" ".join([flag, *map(str, value)]))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


@dataclass
class ReportInputs:
    """What a report-figure script reads: the run folder, its snapshots, the validation folder,
    and where to compute."""

    run: Path
    snapshots: dict
    val_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None


def report_inputs(args, problem):
    """Check a figure script's ``--out``, ``--run`` and ``--val-dir`` (default: the run's own,
    else the course's layout) before any work, and resolve its device."""
    check_writable(args.out, "--out", folder=True)
    run = check_run(args.run, "--run")
    snaps = snapshots(run, "--run")
    device = resolve_device(args.device)
    val_dir = Path(args.val_dir or run_arg(run, "val_dir") or DEFAULTS[problem]["val_dir"])
    return ReportInputs(run, snaps, val_dir, device, resolve_amp(args.amp, device))
