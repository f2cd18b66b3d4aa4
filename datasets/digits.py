"""The embedded demo data: scikit-learn's bundled handwritten digits in the Problem 1 layout.

The 1,797 real 8x8 scans (10 classes) are upscaled to 32x32 RGB and written as
``train_50/{label}_{id}.png`` and ``val_50/{label}_{id}.png``, like the course's folders, so every
script runs on them unchanged and offline.
"""
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root, *, val_fraction=0.2):
    """Write the digits into ``root/train_50`` and ``root/val_50``; returns the two folders.

    The split is fixed: the last ``val_fraction`` of each class (in scikit-learn's order) is
    validation. Existing files are overwritten, so the call is idempotent.

    Args:
        root: the folder to write into (created if needed).
        val_fraction: the share of each class kept for validation.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    train_dir, val_dir = root / "train_50", root / "val_50"
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    for label in range(10):
        scans = digits.images[digits.target == label]
        n_val = int(round(len(scans) * val_fraction))
        for i, scan in enumerate(scans):
            grey = Image.fromarray(np.uint8(np.round(scan * (255.0 / 16.0))), mode="L")
            image = grey.resize((32, 32), Image.BILINEAR).convert("RGB")
            folder = val_dir if i >= len(scans) - n_val else train_dir
            image.save(folder / f"{label}_{i}.png")
    return train_dir, val_dir
