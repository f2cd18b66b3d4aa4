"""Finding and decoding the image files of a folder, with one-line errors for bad files."""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from utils.errors import UserError, brief


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
    """Decode one JPEG file to a uint8 RGB tensor (3, H, W) with ``torchvision.io`` (libjpeg-turbo,
    the same pixels as PIL, faster).

    Raises:
        UserError: naming the file, when it is not a readable JPEG image.
    """
    try:
        return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JPEG image ({brief(e, 100)})") from None


def decode_jpegs(paths, device=None, workers=None, chunk=64):
    """Decode JPEG files to uint8 RGB tensors (3, H, W), on ``device``.

    On CUDA the files are read by threads and decoded in batches on the GPU (nvJPEG); elsewhere
    each file is decoded by a thread of the pool.

    Raises:
        UserError: naming the first file that is not a readable JPEG image.
    """
    device = torch.device(device or "cpu")
    if device.type != "cuda":
        return decode_all(list(paths), read_jpeg, workers)
    paths = list(paths)
    data = decode_all(paths, lambda p: read_file(str(p)), workers)
    images = []
    for start in range(0, len(paths), chunk):
        part = slice(start, start + chunk)
        try:
            images += decode_jpeg(data[part], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            # Name the bad file (the CPU decoder raises for it); a file only nvJPEG rejects
            # (CMYK, for one) is decoded on the CPU instead.
            images += [read_jpeg(p).to(device) for p in paths[part]]
    return images
