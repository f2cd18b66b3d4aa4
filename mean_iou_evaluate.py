"""Score predicted masks against ground truth with the course's mIoU.

Usage:
    python3 mean_iou_evaluate.py -g hw1_data/p2_data/validation -p pred_masks/

Prints the course's figure, in its format (``class #i : x.xxxxx`` for classes 0-5, then
``mean_iou: x.xxxxxx``): IoU_i = TP / (TP + FP + FN) with the counts pooled over all images,
Unknown not averaged but still counted as a wrong answer. Unlike the course's script, files are
paired by image id (the name without ``_mask``/``_sat`` and extension) rather than by sorted
order, a missing or extra file is named instead of misaligning every pair, masks may have any
size, and a class absent from both sides is reported as such and left out of the mean instead
of turning it into nan. The same code computes validation mIoU during training.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
from pathlib import Path

import numpy as np
import torch

from datasets.folder import decode_all, list_files
from datasets.p2 import MASK_SUFFIX, NUM_CLASSES, SCORED_CLASSES, image_id, read_mask
from utils.args import make_parser
from utils.errors import UserError, run_cli
from utils.metrics import confusion_matrix, iou_from_confusion


def get_args_parser():
    parser = make_parser(__doc__, [])
    parser.add_argument("-g", "--labels", type=Path, required=True,
                        help="ground-truth folder (xxxx_mask.png; other files ignored)")
    parser.add_argument("-p", "--pred", type=Path, required=True, help="prediction folder (xxxx.png)")
    return parser


def _masks_by_id(files, folder, flag):
    by_id = {}
    for f in files:
        key = image_id(f)
        if key in by_id:
            raise UserError(f"{flag} {folder}: two masks for image {key} ({by_id[key].name}, {f.name})")
        by_id[key] = f
    return by_id


def _describe(ids, limit=3):
    ids = sorted(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def pair_masks(labels_dir, pred_dir):
    """``[(gt_path, pred_path)]`` paired by image id; refuses folders that do not pair up."""
    if Path(labels_dir).absolute() == Path(pred_dir).absolute():
        raise UserError(f"-g and -p are one folder ({labels_dir}): the ground truth would be scored against itself")
    truth = [f for f in list_files(labels_dir, ".png") if f.name.lower().endswith(MASK_SUFFIX)]
    if not truth:
        raise UserError(f"-g {labels_dir}: no ground-truth masks (xxxx{MASK_SUFFIX}) there; are -g and -p swapped?")
    gt, pred = _masks_by_id(truth, labels_dir, "-g"), _masks_by_id(list_files(pred_dir, ".png"), pred_dir, "-p")
    missing, extra = gt.keys() - pred.keys(), pred.keys() - gt.keys()
    if missing:
        raise UserError(f"-p {pred_dir}: no prediction for {len(missing)} ground-truth mask(s): {_describe(missing)}")
    if extra:
        raise UserError(f"-p {pred_dir}: {len(extra)} prediction(s) without ground truth in {labels_dir}: "
                        f"{_describe(extra)}")
    return [(gt[k], pred[k]) for k in sorted(gt)]


def score(pairs):
    """The pooled 7x7 confusion matrix of every (ground truth, prediction) pair."""
    def one(pair):
        g, p = read_mask(pair[0]), read_mask(pair[1])
        if g.shape != p.shape:
            raise UserError(f"{pair[1]}: prediction is {p.shape[1]}x{p.shape[0]}, "
                            f"its ground truth {pair[0].name} is {g.shape[1]}x{g.shape[0]}")
        return confusion_matrix(torch.from_numpy(p), torch.from_numpy(g), NUM_CLASSES)

    return torch.stack(decode_all(pairs, one)).sum(0)


def report(ious, miou):
    """The course's printout, with absent classes said as such."""
    lines = [f"class #{i} : {iou:1.5f}" if iou is not None
             else f"class #{i} : absent (in neither ground truth nor prediction; left out of the mean)"
             for i, iou in enumerate(ious)]
    return "\n".join(lines) + f"\n\nmean_iou: {miou:f}\n"


def main(args):
    matrix = score(pair_masks(args.labels, args.pred))
    ious, miou = iou_from_confusion(matrix, SCORED_CLASSES)
    print(report(ious, miou))
    return {"miou": miou, "ious": ious, "pixels": int(matrix.sum()), "confusion": np.asarray(matrix).tolist()}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
