"""The embedded demo data: scikit-learn's bundled handwritten digits in the Problem 1 layout.

The 1,797 real 8x8 scans (10 classes) are upscaled to 32x32 RGB and written as
``train_50/{label}_{id}.png`` and ``val_50/{label}_{id}.png``, like the course's folders, so every
script runs on them unchanged and offline.
"""
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root, *, val_fraction=0.2, test_fraction=0.0):
    """Write the digits into ``root/train_50`` and ``root/val_50`` (and ``root/test_50``).

    The split is fixed, in scikit-learn's order within each class: the last ``test_fraction``
    is a held-out test set (written only when > 0), the ``val_fraction`` before it validation,
    the rest training. Existing files are overwritten, so the call is idempotent.

    Args:
        root: the folder to write into (created if needed).
        val_fraction: the share of each class kept for validation (checkpoint selection).
        test_fraction: the share of each class that neither training nor selection sees.

    Returns:
        ``(train_dir, val_dir)``, and ``test_dir`` after them when ``test_fraction`` > 0.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    folders = [root / "train_50", root / "val_50"] + ([root / "test_50"] if test_fraction > 0 else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for label in range(10):
        scans = digits.images[digits.target == label]
        n_test = int(round(len(scans) * test_fraction))
        n_val = int(round(len(scans) * val_fraction))
        for i, scan in enumerate(scans):
            grey = Image.fromarray(np.uint8(np.round(scan * (255.0 / 16.0))), mode="L")
            image = grey.resize((32, 32), Image.BILINEAR).convert("RGB")
            part = 2 if i >= len(scans) - n_test else 1 if i >= len(scans) - n_test - n_val else 0
            image.save(folders[part] / f"{label}_{i}.png")
    return tuple(folders)
