"""Checkpoints: plain dicts, written atomically, loaded with ``weights_only=True``; their entries
declared once, here.

A checkpoint is one dict of three groups of entries:

- what rebuilds the model with no other input (:func:`model_entries` builds them; :data:`IDENTITY`
  are those a file must hold to be read as a checkpoint at all): ``format`` (:data:`FORMAT`),
  ``problem``, ``arch``, ``model_kwargs`` (the builder's keywords, the number of classes among
  them), ``num_classes``, ``mean``/``std`` (the input normalisation), ``args`` (the run's flags, as
  ``args.json``), ``class_weights`` (Problem 2's median-frequency weights, or ``None``), and the
  weights, ``model`` (the moving average's where the run keeps one, marked ``"weights": "ema"``,
  in every file but ``last.pth``);
- the progress (:meth:`training.run.TrainState.checkpoint`): ``epoch`` (finished),
  ``best_metric``, ``best_epoch``, ``metrics`` (that epoch's line of ``metrics.jsonl``);
- :data:`RESUME_ENTRIES`, in ``last.pth`` only: ``optimizer``, ``scheduler``, ``scaler``, ``ema``
  (the moving average of the weights, or ``None``), ``rng`` (the global RNG states), and for an
  epoch stopped part-way ``step`` and ``partial`` (the steps done, the loss sums so far, the epoch's
  augmentation streams, and the device they continue only on).

:func:`inference_checkpoint` drops the last group.
Which file holds which is :mod:`utils.run_folder`'s. The weights are saved from the CPU; optimiser
states keep their device, and every load maps all tensors to the CPU, so a checkpoint written on
a GPU loads anywhere. A file of another ``format`` is refused with its number.
"""
import pickle
import re
import warnings
from pathlib import Path

import torch

from utils.errors import UserError, brief
from utils.io import atomic_write

PROBLEM_NAMES = {"p1": "Problem 1", "p2": "Problem 2"}
TASK_NAMES = {"p1": "classification", "p2": "segmentation"}
IDENTITY = ("model", "arch", "problem", "model_kwargs")
RESUME_ENTRIES = ("optimizer", "scheduler", "scaler", "ema", "rng", "step", "partial")
# 3: flags as config.flags declares them, TTA as a mode's name, timm's parameter-group order.
FORMAT = 3
# torch.save writes a zip archive; files of torch before 1.6 are a pickle (protocol 2 opcode).
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def unwrap(model):
    """The bare module inside DistributedDataParallel or ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def model_entries(*, problem, arch, model_kwargs, mean, std, args, class_weights=None):
    """The entries every checkpoint carries to rebuild its model, but the weights (the first group
    of the module docstring).

    Args:
        problem: ``"p1"`` or ``"p2"``.
        arch: the registry name of the model.
        model_kwargs: its builder's keywords, ``num_classes`` among them.
        mean, std: the normalisation of its inputs.
        args: the run's flags as JSON values (``{}`` for no run).
        class_weights: Problem 2's class weights in the loss, or ``None``.
    """
    return {"format": FORMAT, "problem": problem, "arch": arch, "model_kwargs": dict(model_kwargs),
            "num_classes": model_kwargs["num_classes"], "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "args": dict(args), "class_weights": class_weights}


def inference_checkpoint(ckpt):
    """``ckpt`` without :data:`RESUME_ENTRIES`: what inference and the report figures read, with
    the weights that were validated (the moving average, when the run keeps one)."""
    weights = {k: v for k, v in ckpt.items() if k not in RESUME_ENTRIES}
    if ckpt.get("ema") is not None:
        weights.update(model=ckpt["ema"], weights="ema")
    return weights


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path, *, problem=None, map_location="cpu"):
    """Load a checkpoint of this project and check it is of the expected problem.

    Args:
        path: the checkpoint file.
        problem: ``"p1"`` or ``"p2"`` to refuse the other problem's checkpoints; ``None`` accepts both.
        map_location: where tensors land (default CPU, so GPU checkpoints load anywhere).

    Returns:
        The checkpoint dict.

    Raises:
        UserError: the file is missing, is not a checkpoint of this project, or is of another problem.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint file (a run folder's are best.pth and last.pth)")
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    ckpt = _load(path, map_location, f"{path}: not a readable checkpoint")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in IDENTITY):
        raise UserError(f"{path}: not a checkpoint of this project (no model/arch/problem entries)")
    found = ckpt.get("format", 1)
    if found > FORMAT:
        raise UserError(f"{path}: checkpoint format {found} is newer than this code reads "
                        f"(format {FORMAT}); update the repository")
    if found < FORMAT:
        raise UserError(f"{path}: checkpoint format {found}, of an earlier release of this code (this one reads "
                        f"format {FORMAT}); retrain, or use the release that wrote it")
    if problem is not None and ckpt["problem"] != problem:
        raise UserError(
            f"{path}: this is a {_problem(ckpt['problem'])} checkpoint ({ckpt['arch']}); a {_problem(problem)} "
            "checkpoint is needed here"
        )
    return ckpt


def _problem(problem):
    """``Problem 1 (classification)``, say."""
    return f"{PROBLEM_NAMES[problem]} ({TASK_NAMES[problem]})" if problem in PROBLEM_NAMES else problem


def _load(path, map_location, what):
    """``torch.load(weights_only=True)``, any failure becoming one line that starts with ``what``."""
    # torch.load's own error for a file torch.save did not write ("Unsupported operand 35", a
    # text file's '#') names a pickle opcode, not the problem; its first bytes tell it plainly.
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        kind = "empty" if not head else "text" if _is_text(path) else "in another format"
        raise UserError(f"{what} (the file is {kind}, not one written by torch.save)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message opens with advice about its weights_only default; the cause is one line.
        cause = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        detail = cause.group(1) if cause else brief(e, 120)
        raise UserError(f"{what} (torch.load with weights_only=True refused it: {brief(detail, 100)})") from None
    except Exception as e:  # torch raises many types for a file that is not one (zip, pickle, EOF)
        raise UserError(f"{what} ({brief(e, 120)})") from None


def _is_text(path, size=4096):
    """Whether the start of ``path`` reads as UTF-8 text (a character cut at the end allowed)."""
    with open(path, "rb") as f:
        text = f.read(size).decode("utf-8", errors="replace")
    return "\ufffd" not in text[:-1] and all(c.isprintable() or c in "\t\n\r\ufffd" for c in text)


def load_weights_into(module, path, what, flag="--pretrained-file"):
    """Load a local weights file (``.pth``) into ``module``, for ``--pretrained-file``.

    Accepts a bare state dict or a dict holding one under ``state_dict`` or ``model``.

    Args:
        module: the network the weights are for.
        path: the file.
        what: the weights' name for messages ("VGG16 weights").
        flag: the flag that named the file.

    Raises:
        UserError: naming the file and the flag, when it is missing, holds no state dict, or
            holds weights of another network.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    state = _load(path, "cpu", f"{flag} {path}: not a readable weights file")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{flag} {path}: holds no state dict of tensors")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{flag} {path}: not {what} ({brief(e)})") from None
    return module
