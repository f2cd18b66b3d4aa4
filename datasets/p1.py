"""Problem 1 data: 50 classes of 32x32 images named ``{label}_{id}.png``.

A folder is decoded once into one uint8 tensor (N, 3, 32, 32); 22,500 training images take 69 MB,
so the whole set lives on the training device and batches are index lookups into it.
"""
import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.folder import decode_all, list_files, open_rgb
from datasets.p2 import MASK_SUFFIX
from utils.errors import UserError
from utils.io import atomic_write

NUM_CLASSES = 50
IMAGE_SIZE = 32
# Training-set statistics of train_50 (RECIPES.md), used by the models trained from scratch.
MEAN = (0.5077, 0.4813, 0.4312)
STD = (0.2000, 0.1986, 0.2034)

_LABELED_NAME = re.compile(r"^(\d+)_[^/]+\.png$", re.IGNORECASE)


@dataclass
class ImageSet:
    """Decoded images with their file names and, for a labelled folder, their labels.

    Attributes:
        images: uint8 tensor (N, 3, 32, 32).
        labels: int64 tensor (N,), or ``None`` for an unlabelled folder.
        names: file names (no folder), sorted.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    names: list

    def __len__(self):
        return len(self.names)

    def to(self, device):
        """The same set with its tensors on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        return ImageSet(self.images.to(device), labels, self.names)


def parse_label(path):
    """The class label carried by a file name ``{label}_{id}.png``.

    Raises:
        UserError: naming the file, when its name carries no label in 0..49.
    """
    match = _LABELED_NAME.match(path.name)
    if match is None or int(match.group(1)) >= NUM_CLASSES:
        raise UserError(f"{path}: file name carries no class label "
                        f"(expected '<label>_<id>.png' with a label from 0 to {NUM_CLASSES - 1})")
    return int(match.group(1))


def load_folder(folder, *, labeled, workers=None):
    """Decode every ``.png`` of ``folder`` into an :class:`ImageSet`.

    Images of another size are resized to 32x32 (bicubic) with one warning for the folder.

    Args:
        folder: the image folder.
        labeled: parse labels from the file names (training and validation folders).
        workers: decoding threads (default: up to 8).

    Raises:
        UserError: a missing or empty folder, a folder of Problem 2 masks, an unreadable PNG, or a
            name without a label.
    """
    paths = list_files(folder, ".png")
    if all(p.name.lower().endswith(MASK_SUFFIX) for p in paths):
        raise UserError(f"{folder}: holds Problem 2 masks ({paths[0].name}, ...), not Problem 1 images "
                        f"('<label>_<id>.png', {IMAGE_SIZE}x{IMAGE_SIZE})")
    labels = torch.tensor([parse_label(p) for p in paths]) if labeled else None
    images = decode_all(paths, lambda p: open_rgb(p, "PNG"), workers)
    resized = [(p.name, im.size) for p, im in zip(paths, images) if im.size != (IMAGE_SIZE, IMAGE_SIZE)]
    if resized:
        name, (w, h) = resized[0]
        warnings.warn(f"{folder}: {len(resized)} image(s) are not {IMAGE_SIZE}x{IMAGE_SIZE} "
                      f"(first: {name}, {w}x{h}); resized to {IMAGE_SIZE}x{IMAGE_SIZE}", stacklevel=2)
    array = np.stack([
        np.asarray(im if im.size == (IMAGE_SIZE, IMAGE_SIZE)
                   else im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
        for im in images
    ])
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return ImageSet(tensor, labels, [p.name for p in paths])


def write_predictions(path, names, labels):
    """Write the grading CSV: header ``filename,label``, one row per image, atomically (its
    folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(zip(names, labels))


def csv_accuracy(path):
    """Score a grading CSV against the labels in its file names (``{label}_{id}.png``).

    Returns:
        ``(accuracy, rows)``: the share of rows whose label is the file name's, and their number.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(int(r["label"]) == parse_label(Path(r["filename"])) for r in rows) / len(rows), len(rows)
