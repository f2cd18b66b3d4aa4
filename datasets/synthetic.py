"""Procedural land-cover tiles in the Problem 2 layout, for the demo and the tests.

Each tile is a Voronoi map of regions, each of one class with its own colour and texture
(urban grid, agriculture stripes, rangeland and barren grain, forest blobs, smooth water, black
Unknown), written as ``xxxx_sat.jpg`` with an RGB ``xxxx_mask.png`` in the course's colours.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.p2 import PALETTE

_BASE = np.array([(128, 128, 132), (196, 180, 92), (168, 150, 110), (40, 96, 48),
                  (30, 64, 128), (210, 200, 180), (8, 8, 8)], dtype=np.float32)


def _texture(cls, yy, xx, rng):
    if cls == 0:  # urban: a street grid
        return 50.0 * (((yy // 6) % 4 == 0) | ((xx // 6) % 4 == 0))
    if cls == 1:  # agriculture: field stripes
        return 30.0 * np.sin((xx + 0.5 * yy) / 3.0)
    if cls == 3:  # forest: blobs
        return 25.0 * np.sin(xx / 5.0) * np.sin(yy / 4.0)
    if cls == 4:  # water: smooth
        return 0.0
    return rng.normal(0, 18.0 if cls == 2 else 8.0, yy.shape)  # rangeland, barren, unknown: grain


def make_tile(size, rng, regions=6, unknown_share=0.05):
    """One (image (H, W, 3) uint8, classes (H, W) uint8) pair."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    seeds = rng.uniform(0, size, (regions, 2))
    owner = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    region_class = rng.choice(7, size=regions, p=[(1 - unknown_share) / 6] * 6 + [unknown_share])
    classes = region_class[owner].astype(np.uint8)
    image = _BASE[classes] + rng.normal(0, 6.0, (size, size, 3))
    for cls in np.unique(classes):
        where = classes == cls
        image[where] += np.broadcast_to(_texture(int(cls), yy, xx, rng), classes.shape)[where][:, None]
    return np.clip(image, 0, 255).astype(np.uint8), classes


def write_tiles(folder, count, *, size=512, seed=0, start=0):
    """Write ``count`` tiles ``{start+i:04d}_sat.jpg`` / ``_mask.png`` into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = np.array(PALETTE, dtype=np.uint8)
    for i in range(start, start + count):
        image, classes = make_tile(size, rng)
        Image.fromarray(image).save(folder / f"{i:04d}_sat.jpg", quality=92)
        Image.fromarray(palette[classes]).save(folder / f"{i:04d}_mask.png")
    return folder
