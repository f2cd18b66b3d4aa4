"""Reading training runs for the report: snapshots, metrics, and the command that made them."""
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from datasets.folder import list_files
from datasets.p2 import image_id
from models import get_model_spec, list_models, option_names
from utils.errors import UserError
from utils.io import check_writable
from utils.recipes import DEFAULTS
from utils.runtime import resolve_amp, resolve_device

_SNAPSHOT = re.compile(r"^epoch_(\d+)\.pth$")
DEFAULT_TILE_IDS = ("0013", "0062", "0104")  # the report's mask figures (the seed's choice)


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
        if value is None or key in ("resume", "overwrite", "progress", "device", "amp") or not applies(args, key):
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
    """What a report-figure script reads: the run folder, its snapshots, the validation folder,
    and where to compute."""

    run: Path
    snapshots: dict
    val_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None


def report_inputs(args, problem):
    """Check a figure script's ``--out``, ``--run`` and ``--val-dir`` before any work, and
    resolve its device."""
    check_writable(args.out, "--out", folder=True)
    run = check_run(args.run, "--run")
    snaps = snapshots(run, "--run")
    device = resolve_device(args.device)
    return ReportInputs(run, snaps, val_dir_of(run, args.val_dir, problem), device, resolve_amp(args.amp, device))


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
