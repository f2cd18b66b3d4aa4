"""Checkpoints: plain dicts, written atomically, loaded with ``weights_only=True``.

A checkpoint holds everything needed to rebuild the model with no other input (``arch``,
``model_kwargs``, ``problem``, ``num_classes``, ``mean``/``std``) and everything needed to resume
exactly (:mod:`training.run` lists the entries). The weights are saved from the CPU; optimiser
states keep their device, and every load maps all tensors to the CPU, so a checkpoint written on
a GPU loads anywhere. ``format`` numbers the layout: 1 (no entry) and 2 are the same layout, 2
naming it; a file of a later format is refused with its number.
"""
import pickle
import re
import warnings
from pathlib import Path

import torch

from utils.errors import UserError, brief
from utils.io import atomic_write

PROBLEM_NAMES = {"p1": "Problem 1 (classification)", "p2": "Problem 2 (segmentation)"}
REQUIRED_KEYS = ("model", "arch", "problem", "model_kwargs")
FORMAT = 2
# torch.save writes a zip archive; files of torch before 1.6 are a pickle (protocol 2 opcode).
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def unwrap(model):
    """The bare module inside DistributedDataParallel or ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


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
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    ckpt = _load(path, map_location, f"{path}: not a readable checkpoint")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise UserError(f"{path}: not a checkpoint of this project (no model/arch/problem entries)")
    if ckpt.get("format", 1) > FORMAT:
        raise UserError(f"{path}: checkpoint format {ckpt['format']} is newer than this code reads "
                        f"(format {FORMAT} and earlier); update the repository")
    if problem is not None and ckpt["problem"] != problem:
        raise UserError(
            f"{path}: this is a {PROBLEM_NAMES.get(ckpt['problem'], ckpt['problem'])} checkpoint "
            f"({ckpt['arch']}); a {PROBLEM_NAMES[problem]} checkpoint is needed here"
        )
    return ckpt


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
