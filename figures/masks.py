"""Problem 2 mask figures: predictions of chosen tiles during training, and the graded view.

``p2_mask_progress.png`` has a row per tile and the columns input, prediction at the first /
middle / last epoch snapshot, ground truth. ``p2_overlay.png`` is the course visualiser's view of
the same tiles: class colours blended over the photo (darkened, so that white shows) with the
class boundaries drawn, for the ground truth and the prediction of ``best.pth``, the checkpoint
grading uses. Its legend shows each class as the overlay draws it over a mid-grey tile.
"""
from pathlib import Path

import numpy as np

from datasets.folder import read_jpeg
from datasets.p2 import CLASS_NAMES, PALETTE, read_mask
from datasets.presets import p2_inference_transform
from models import load_trained
from figures.plots import mask_overlay, plot_image_grid
from figures.runs import first_middle_last
from inference import run_tta, segment
from utils.errors import UserError

# The course visualiser blends at 0.3 over the photo as it is, where white (barren) on a light
# tile disappears; a photo at half brightness under a stronger blend keeps every class visible.
# Boundaries are pure red, the one corner of the RGB cube that is no class's colour (the course's
# masks decode red as Unknown): a boundary is never taken for a class, black Unknown and white
# barren included, and at full saturation it stands out on the darkened photo and on every blend.
OVERLAY = dict(alpha=0.45, dim=0.5, boundary=(255, 0, 0))
MID_GREY = 128  # the tile the legend's swatches are blended over


def load_examples(val_dir, ids, flag="--ids"):
    """``(images [(3, H, W) uint8 tensors], masks [(H, W) arrays])`` of the tiles ``ids``; ``flag``
    names the option that chose them, for the message when one is missing."""
    images, masks = [], []
    for i in ids:
        tile, mask = Path(val_dir) / f"{i}_sat.jpg", Path(val_dir) / f"{i}_mask.png"
        for path in (tile, mask):
            if not path.is_file():
                raise UserError(f"{flag} {i}: {path} does not exist")
        images.append(read_jpeg(tile))
        masks.append(read_mask(mask))
    return images, masks


def mask_figures(inputs, ids, out, *, flag="--ids", progress=None):
    """Write ``p2_mask_progress.png`` and ``p2_overlay.png`` of a Problem 2 run into ``out``.

    Each checkpoint segments as its run validated (its ``--tta`` and ``--tta-scales``).

    Args:
        inputs: the run, its snapshots, validation folder and device
            (:func:`figures.runs.open_run`).
        ids: the tiles to show (``0013`` ...).
        out: the output folder, which exists (the scripts make it: :func:`utils.io.output_folder`).
        flag: the option that chose ``ids``, for the messages.
        progress: show progress bars; None: on a terminal only.

    Returns:
        ``{"progress": {path, ..., "epochs"}, "overlay": {path, ..., "title"}}``.
    """
    images, truths = load_examples(inputs.val_dir, ids, flag)
    palette = np.array(PALETTE, dtype=np.uint8)

    def masks_of(checkpoint):
        model, ckpt = load_trained(checkpoint, inputs.device, problem="p2")
        return segment(model, images, transform=p2_inference_transform(mean=ckpt["mean"], std=ckpt["std"]),
                       batch_size=4, device=inputs.device, amp_dtype=inputs.amp_dtype,
                       tta=run_tta(ckpt["args"]),
                       progress=progress), ckpt

    epochs = first_middle_last(inputs.snapshots)
    predictions = {}
    for epoch in epochs:
        predictions[epoch], ckpt = masks_of(inputs.snapshots[epoch])
    arch = ckpt["arch"]
    photos = [img.permute(1, 2, 0).numpy() for img in images]
    rows = [[photos[r], *[palette[predictions[e][r]] for e in epochs], palette[truths[r]]]
            for r in range(len(images))]
    legend = list(zip(CLASS_NAMES, PALETTE))  # the masks are drawn in the pure class colours
    out = Path(out)
    grid = plot_image_grid(rows, ["input", *[f"epoch {e}" for e in epochs], "ground truth"],
                           out / "p2_mask_progress.png", row_titles=list(ids), legend=legend,
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
    overlay = plot_image_grid(overlay_rows, ["ground truth", graded_title], out / "p2_overlay.png",
                              row_titles=list(ids), legend=overlay_legend(palette),
                              legend_title="class colours as blended over a mid-grey tile",
                              suptitle=f"{arch}: classes blended at {OVERLAY['alpha']} over the tile at "
                                       f"{OVERLAY['dim']:.0%} brightness; boundaries in red")
    print(f"wrote {grid['path']} and {overlay['path']}")
    return {"progress": {**grid, "epochs": epochs}, "overlay": {**overlay, "title": graded_title}}


def overlay_legend(palette):
    """``(name, colour)`` of every class as :data:`OVERLAY` draws it over a mid-grey tile, and of
    the boundary."""
    grey = np.full((1, 1, 3), MID_GREY, dtype=np.uint8)  # one pixel: no boundary
    swatches = [tuple(mask_overlay(grey, np.full((1, 1), c), palette, **OVERLAY)[0, 0]) for c in range(len(palette))]
    return [*zip(CLASS_NAMES, swatches), ("class boundary", OVERLAY["boundary"])]
