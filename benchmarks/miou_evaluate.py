"""Benchmark: mean_iou_evaluate.py's scoring against the course's straightforward per-class loop.

Usage:
    python3 benchmarks/miou_evaluate.py [--masks 257] [--size 512]

Writes N ground-truth and N predicted RGB masks (the validation set has 257 at 512x512), then
scores them two ways, both from the files:
  ours:            pair by id, decode each mask with one lookup table on a thread pool, pool one
                   7x7 confusion matrix (mean_iou_evaluate.pair_masks + score);
  straightforward: the course's script: read every mask, threshold, map codes one class at a time
                   into an (N, H, W) array, then per class sum TP / FP / FN with numpy.
Prints masks/s for each, the ratio, and checks both give the same mIoU.
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mean_iou_evaluate  # noqa: E402
from datasets.p2 import PALETTE  # noqa: E402
from utils.metrics import iou_from_confusion  # noqa: E402
from utils.args import check_positive, make_parser  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def course_read_masks(folder, size):
    files = sorted(p for p in Path(folder).iterdir() if p.suffix == ".png")
    masks = np.empty((len(files), size, size))
    for i, f in enumerate(files):
        mask = (np.asarray(Image.open(f).convert("RGB")) >= 128).astype(int)
        mask = 4 * mask[:, :, 0] + 2 * mask[:, :, 1] + mask[:, :, 2]
        masks[i, mask == 3] = 0
        masks[i, mask == 6] = 1
        masks[i, mask == 5] = 2
        masks[i, mask == 2] = 3
        masks[i, mask == 1] = 4
        masks[i, mask == 7] = 5
        masks[i, mask == 0] = 6
        masks[i, mask == 4] = 6
    return masks


def course_miou(pred, labels):
    total = 0.0
    for i in range(6):
        tp_fp, tp_fn = np.sum(pred == i), np.sum(labels == i)
        tp = np.sum((pred == i) * (labels == i))
        total += tp / (tp_fp + tp_fn - tp) / 6
    return total


def get_args_parser():
    parser = make_parser(__doc__, [])
    parser.add_argument("--masks", type=int, default=257, help="masks in each folder")
    parser.add_argument("--size", type=int, default=512, help="mask size")
    return parser


def main(args):
    check_positive(args, 'masks', 'size')
    palette = np.array(PALETTE, dtype=np.uint8)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        gt, pred = Path(tmp, "gt"), Path(tmp, "pred")
        gt.mkdir(), pred.mkdir()
        for i in range(args.masks):
            truth = np.repeat(np.repeat(rng.integers(0, 7, (args.size // 32, args.size // 32)), 32, 0), 32, 1)
            noisy = np.where(rng.random(truth.shape) < 0.2, rng.integers(0, 7, truth.shape), truth)
            Image.fromarray(palette[truth]).save(gt / f"{i:04d}_mask.png")
            Image.fromarray(palette[noisy]).save(pred / f"{i:04d}_sat.png")
        start = time.perf_counter()
        ious, ours = iou_from_confusion(mean_iou_evaluate.score(mean_iou_evaluate.pair_masks(gt, pred)), 6)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        base = course_miou(course_read_masks(pred, args.size), course_read_masks(gt, args.size))
        t_base = time.perf_counter() - start
    n = args.masks
    print(f"{n} mask pairs of {args.size}x{args.size}")
    print(f"ours: {t_ours:.2f}s = {n / t_ours:,.0f} pairs/s, mIoU {ours:.6f}")
    print(f"straightforward (the course's read_masks + per-class numpy loop): {t_base:.2f}s = "
          f"{n / t_base:,.0f} pairs/s, mIoU {base:.6f}")
    print(f"ratio: {t_base / t_ours:.1f}x; same mIoU: {abs(ours - base) < 1e-9}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
