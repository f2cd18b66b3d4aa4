"""Problem 2 mask figures: predictions of chosen tiles at the first, middle and last epoch.

Usage:
    python3 p2_masks.py --run runs/p2_deeplabv3 --val-dir hw1_data/p2_data/validation --out report/

p2_mask_progress.png has a row per tile (default 0013, 0062, 0104) and the columns input,
prediction at the first / middle / last epoch snapshot, ground truth. p2_overlay.png is the
course visualiser's view of the same tiles: class colours blended over the photo (darkened, so
that white shows) with the class boundaries drawn, for the ground truth and the prediction of
best.pth, the checkpoint grading uses.
"""
from pathlib import Path

import numpy as np

from datasets.folder import read_jpeg
from datasets.p2 import CLASS_NAMES, PALETTE, read_mask
from datasets.presets import p2_inference_transform
from models import load_trained
from utils.args import make_parser, report_parser
from utils.engine import segment, tta_mode
from utils.errors import UserError, run_cli
from utils.plotting import mask_overlay, plot_image_grid
from utils.report import default_tile_ids, first_middle_last, report_inputs

# The course visualiser blends at 0.3 over the photo as it is, where white (barren) on a light
# tile disappears; a photo at half brightness under a stronger blend keeps every class visible.
OVERLAY = dict(alpha=0.45, dim=0.5)


def get_args_parser():
    parser = make_parser(__doc__, [report_parser("p2")])
    parser.add_argument("--ids", nargs="+", default=None,
                        help="tile ids to show (default: 0013 0062 0104, the report's, or else the "
                             "folder's first three)")
    return parser


def load_examples(val_dir, ids):
    """``(images [(3, H, W) uint8 tensors], masks [(H, W) arrays])`` of the tiles ``ids``."""
    images, masks = [], []
    for i in ids:
        tile, mask = Path(val_dir) / f"{i}_sat.jpg", Path(val_dir) / f"{i}_mask.png"
        for path in (tile, mask):
            if not path.is_file():
                raise UserError(f"--ids {i}: {path} does not exist")
        images.append(read_jpeg(tile))
        masks.append(read_mask(mask))
    return images, masks


def main(args):
    inputs = report_inputs(args, "p2")
    snaps, val_dir, device, amp_dtype = inputs.snapshots, inputs.val_dir, inputs.device, inputs.amp_dtype
    args.ids = args.ids or default_tile_ids(val_dir, "--ids")
    images, truths = load_examples(val_dir, args.ids)
    palette = np.array(PALETTE, dtype=np.uint8)

    def masks_of(checkpoint):
        model, ckpt = load_trained(checkpoint, device, problem="p2")
        return segment(model, images, transform=p2_inference_transform(mean=ckpt["mean"], std=ckpt["std"]),
                       batch_size=4, device=device, amp_dtype=amp_dtype, tta=tta_mode(ckpt["args"].get("tta")),
                       tta_scales=ckpt["args"].get("tta_scales") or [1.0], progress=args.progress), ckpt

    epochs = first_middle_last(snaps)
    predictions = {}
    for epoch in epochs:
        predictions[epoch], ckpt = masks_of(snaps[epoch])
    arch = ckpt["arch"]
    photos = [img.permute(1, 2, 0).numpy() for img in images]
    rows = [[photos[r], *[palette[predictions[e][r]] for e in epochs], palette[truths[r]]]
            for r in range(len(images))]
    legend = list(zip(CLASS_NAMES, PALETTE))
    args.out.mkdir(parents=True, exist_ok=True)
    progress = plot_image_grid(rows, ["input", *[f"epoch {e}" for e in epochs], "ground truth"],
                               args.out / "p2_mask_progress.png", row_titles=list(args.ids), legend=legend,
                               suptitle=f"{arch}: predicted masks during training")
    # The overlay shows what grading sees: best.pth (the last snapshot only if the run has none).
    best = inputs.run / "best.pth"
    if best.is_file():
        graded, ckpt = masks_of(best)
        graded_title = f"prediction, best.pth (epoch {ckpt['epoch']})"
    else:
        graded, graded_title = predictions[max(epochs)], f"prediction, epoch {max(epochs)} (no best.pth)"
    overlay_rows = [[mask_overlay(photos[r], truths[r], palette, **OVERLAY),
                     mask_overlay(photos[r], graded[r], palette, **OVERLAY)] for r in range(len(images))]
    overlay = plot_image_grid(overlay_rows, ["ground truth", graded_title], args.out / "p2_overlay.png",
                              row_titles=list(args.ids), legend=legend,
                              suptitle=f"{arch}: class colours at {OVERLAY['alpha']} over the darkened tile, "
                                       "boundaries in black")
    print(f"wrote {progress['path']} and {overlay['path']}")
    return {"progress": {**progress, "epochs": epochs}, "overlay": {**overlay, "title": graded_title}}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
