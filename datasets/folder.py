"""Finding and decoding the image files of a folder, with one-line errors for bad files."""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError


def list_files(folder, suffix):
    """The files of ``folder`` ending in ``suffix`` (any case), sorted by name.

    Raises:
        UserError: the folder is missing, is not a folder, or holds no such file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == suffix and p.is_file())
    if not files:
        raise UserError(f"{folder}: no {suffix} images found")
    return files


def open_rgb(path, kind):
    """Decode one image file to an RGB ``PIL.Image`` (greyscale, palette and RGBA converted).

    Raises:
        UserError: naming the file, when it is not a readable image of this kind.
    """
    try:
        with Image.open(path) as im:
            if im.format != kind:
                raise UserError(f"{path}: not a {kind} image (it is {im.format or 'unknown'})")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: not a readable {kind} image ({e})") from None


def decode_all(items, fn, workers=None):
    """``[fn(x) for x in items]`` on a thread pool (PIL releases the GIL while decoding).

    The first error raised by ``fn`` (a :class:`UserError` naming a bad file) propagates.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(items) < 16:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def read_jpeg(path):
    """Decode one JPEG file to a uint8 RGB tensor (3, H, W).

    PIL decodes it (libjpeg-turbo): the one decoder of training, validation and grading, so
    graded masks come from the pixels that were validated. torchvision's decoders are deprecated
    since torchvision 0.29 (for TorchCodec, not a dependency here), and its GPU decoder (nvJPEG)
    need not give libjpeg's pixels; decoding the 313 graded tiles on the CPU takes about a second.

    Raises:
        UserError: naming the file, when it is not a readable JPEG image.
    """
    return torch.from_numpy(np.array(open_rgb(path, "JPEG"))).permute(2, 0, 1)  # a writable copy


def decode_jpegs(paths, workers=None):
    """Decode JPEG files to uint8 RGB tensors (3, H, W) on the CPU, on a thread pool.

    Raises:
        UserError: naming the first file that is not a readable JPEG image.
    """
    return decode_all(list(paths), read_jpeg, workers)
