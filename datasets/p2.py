"""Problem 2 data: 512x512 satellite tiles ``xxxx_sat.jpg`` with RGB masks ``xxxx_mask.png``.

One colour table (``PALETTE``) serves both directions: masks decode with the course's rule
(threshold each channel at 128, code = 4R + 2G + B, one lookup table from code to class; pure red,
code 4, is no class and becomes Unknown), and predictions encode as palette PNGs of those colours.
Tiles decode once into uint8 tensors in host memory (or memory-mapped from ``--cache-dir``); a
training run moves them to the GPU when they fit there (``p2_train.py``).
"""
import hashlib
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.folder import decode_all, decode_jpegs, list_files, open_rgb, read_jpeg
from utils.errors import UserError
from utils.io import atomic_write

NUM_CLASSES = 7
CLASS_NAMES = ("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown")
UNKNOWN = 6
SCORED_CLASSES = 6  # mIoU averages classes 0-5; Unknown still counts as a wrong answer
PALETTE = (
    (0, 255, 255),  # 0 urban: cyan
    (255, 255, 0),  # 1 agriculture: yellow
    (255, 0, 255),  # 2 rangeland: magenta
    (0, 255, 0),  # 3 forest: green
    (0, 0, 255),  # 4 water: blue
    (255, 255, 255),  # 5 barren: white
    (0, 0, 0),  # 6 unknown: black
)
TILE_SIZE = 512


def _code_to_class():
    # Built from PALETTE so the decode and encode directions cannot disagree.
    lut = np.full(8, UNKNOWN, dtype=np.uint8)  # code 4 (pure red) stays Unknown
    for cls, (r, g, b) in enumerate(PALETTE):
        lut[4 * (r >= 128) + 2 * (g >= 128) + (b >= 128)] = cls
    return lut


CODE_TO_CLASS = _code_to_class()
_PALETTE_FLAT = [v for colour in PALETTE for v in colour]


def decode_mask(rgb):
    """An RGB mask (H, W, 3) uint8 array to class indices (H, W) uint8, by the course's rule."""
    rgb = np.asarray(rgb)
    bits = rgb >= 128
    code = (bits[..., 0].astype(np.uint8) << 2) | (bits[..., 1].astype(np.uint8) << 1) | bits[..., 2]
    return CODE_TO_CLASS[code]


def encode_mask(classes):
    """Class indices (H, W) to a palette ``PIL.Image`` in the course's colours."""
    image = Image.fromarray(np.asarray(classes, dtype=np.uint8), mode="P")
    image.putpalette(_PALETTE_FLAT)
    return image


def read_mask(path):
    """Read a mask PNG (any mode) and decode it to class indices (H, W) uint8."""
    return decode_mask(np.asarray(open_rgb(path, "PNG")))


MASK_SUFFIX = "_mask.png"  # xxxx_mask.png, the mask of xxxx_sat.jpg


def image_id(path):
    """The id shared by a tile and its mask: the name without ``_sat``/``_mask`` and extension."""
    stem = Path(path).stem
    for suffix in ("_sat", "_mask"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


@dataclass
class TileSet:
    """Decoded tiles and masks.

    Attributes:
        images: uint8 tensor (N, 3, H, W).
        masks: uint8 tensor (N, H, W) of classes 0-6, or ``None`` (inference).
        names: the tiles' file names, sorted.
    """

    images: torch.Tensor
    masks: torch.Tensor | None
    names: list

    def __len__(self):
        return len(self.names)

    def to(self, device):
        """The same set with its tensors on ``device``."""
        masks = None if self.masks is None else self.masks.to(device)
        return TileSet(self.images.to(device), masks, self.names)

    @property
    def nbytes(self):
        """Bytes the tensors take."""
        return self.images.nbytes + (0 if self.masks is None else self.masks.nbytes)


def _decode_pair(tile, size):
    image = read_jpeg(tile).permute(1, 2, 0).numpy()
    mask_path = tile.with_name(image_id(tile) + MASK_SUFFIX)
    if not mask_path.is_file():
        raise UserError(f"{tile}: no mask beside it (expected {mask_path.name})")
    mask = read_mask(mask_path)
    if image.shape[:2] != (size, size):
        raise UserError(f"{tile}: tile is {image.shape[1]}x{image.shape[0]}, training needs {size}x{size} "
                        f"(--tile-size {size}; give --tile-size {image.shape[1]} if every tile is that size)")
    if mask.shape != (size, size):
        raise UserError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its tile is {size}x{size}")
    return image, mask


def _cache_paths(cache_dir, folder, tiles, size):
    # The key changes when the folder's files change (names, sizes, times) or the tile size does.
    h = hashlib.sha256(f"{Path(folder).resolve()}|{size}".encode())
    for t in tiles:
        st = t.stat()
        h.update(f"{t.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    key = h.hexdigest()[:16]
    return Path(cache_dir) / f"p2_{key}_images.npy", Path(cache_dir) / f"p2_{key}_masks.npy"


def load_pairs(folder, *, size=TILE_SIZE, cache_dir=None, workers=None):
    """Decode every ``xxxx_sat.jpg`` of ``folder`` with its ``xxxx_mask.png``.

    Args:
        folder: the training or validation folder.
        size: the tile size every image and mask must have.
        cache_dir: keep the decoded arrays here as ``.npy`` and memory-map them on later runs.
        workers: decoding threads.

    Raises:
        UserError: a missing or empty folder, an unreadable tile or mask, a tile without its
            mask, or a tile or mask of the wrong size (each naming the file).
    """
    tiles = list_files(folder, ".jpg")
    if cache_dir is not None:
        img_path, mask_path = _cache_paths(cache_dir, folder, tiles, size)
        if img_path.is_file() and mask_path.is_file():
            images = torch.from_numpy(np.load(img_path, mmap_mode="c"))
            masks = torch.from_numpy(np.load(mask_path, mmap_mode="c"))
            return TileSet(images, masks, [t.name for t in tiles])
    # Filled in place by the decoding threads: no second copy of a 2 GB set at its peak.
    images = np.empty((len(tiles), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(tiles), size, size), dtype=np.uint8)

    def fill(i):
        image, mask = _decode_pair(tiles[i], size)
        images[i] = image.transpose(2, 0, 1)
        masks[i] = mask

    decode_all(range(len(tiles)), fill, workers)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        for path, array in ((img_path, images), (mask_path, masks)):
            with atomic_write(path, "wb") as f:
                np.save(f, array)
    return TileSet(torch.from_numpy(images), torch.from_numpy(masks), [t.name for t in tiles])


def load_tiles(folder, workers=None):
    """Decode every ``.jpg`` of ``folder`` for inference (any size); returns (names, images).

    ``images`` is a list of uint8 tensors (3, H, W) in host memory, since sizes may differ,
    decoded as training and validation decode theirs (:func:`datasets.folder.read_jpeg`).
    """
    tiles = list_files(folder, ".jpg")
    return [t.name for t in tiles], decode_jpegs(tiles, workers)


def write_masks(out_dir, names, masks):
    """Write ``<stem>.png`` palette masks into ``out_dir`` all together or not at all.

    The masks are written to a temporary folder inside ``out_dir`` and moved into place only when
    every one is done, so a failure leaves no partial set behind.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".masks-", dir=out_dir))
    try:
        for name, mask in zip(names, masks):
            encode_mask(mask).save(staging / f"{Path(name).stem}.png")
        for name in names:
            os.replace(staging / f"{Path(name).stem}.png", out_dir / f"{Path(name).stem}.png")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def class_weights(masks, *, num_classes=NUM_CLASSES, scored=SCORED_CLASSES, chunk=64):
    """Median-frequency class weights (Eigen & Fergus, ICCV 2015) from training masks.

    ``w_c = median(f) / f_c``, where ``f_c`` is, as Eigen & Fergus define it, the number of pixels
    of class ``c`` over the total number of pixels of the images where ``c`` is present (not over
    all pixels: a class found in few tiles, but covering them, is not rare), and the median is taken
    over the scored classes present. A class half as frequent as the median one weighs twice as
    much. A scored class absent from every mask, and Unknown, weigh 1.

    Args:
        masks: uint8 tensor (N, H, W) of classes (in host memory or on a device).
        num_classes, scored: the classes in the masks, and how many of them are scored.
        chunk: masks counted at once (the count is int64 per pixel).

    Returns:
        A list of ``num_classes`` floats.
    """
    pixels = torch.zeros(num_classes, dtype=torch.float64)  # pixels of class c
    seen_in = torch.zeros(num_classes, dtype=torch.float64)  # pixels of the images holding class c
    per_image = masks[0].numel() if len(masks) else 0
    for start in range(0, len(masks), chunk):
        part = masks[start: start + chunk].reshape(-1, per_image).long()
        rows = torch.arange(len(part), device=part.device).unsqueeze(1) * num_classes
        counts = torch.bincount((rows + part).reshape(-1),
                                minlength=len(part) * num_classes).view(len(part), num_classes).double().cpu()
        pixels += counts.sum(0)
        seen_in += (counts > 0).sum(0).double() * per_image
    freq = {c: pixels[c].item() / seen_in[c].item() for c in range(scored) if pixels[c] > 0}
    weights = [1.0] * num_classes
    if freq:
        median = statistics.median(freq.values())
        for c, f in freq.items():
            weights[c] = median / f
    return weights
