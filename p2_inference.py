"""Grading inference for Problem 2: one palette mask per .jpg tile of a folder.

Usage:
    python3 p2_inference.py --checkpoint runs/p2_deeplabv3/best.pth IMG_DIR OUT_DIR

Every ``xxxx.jpg`` of IMG_DIR (other files, such as the validation folder's ``_mask.png``, are
ignored) gets ``OUT_DIR/xxxx.png`` (so ``0013_sat.jpg`` -> ``0013_sat.png``): a palette PNG of
the input's size in the course's seven colours. Tiles of any size are padded to a multiple of 32
and the prediction cropped back. Masks are written to a temporary folder and moved into OUT_DIR
only when all of them are done, so a failure leaves nothing behind.
"""
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from datasets.p2 import encode_mask, load_tiles
from datasets.transforms import Compose, Normalize
from p1_inference import load_model
from utils.args import check_positive, inference_parser, make_parser
from utils.engine import predict
from utils.errors import run_cli
from utils.io import check_writable
from utils.runtime import resolve_amp, resolve_device

STRIDE = 32  # both models' output stride (or a divisor of it)


def get_args_parser():
    parser = make_parser(__doc__, [inference_parser("p2")])
    parser.add_argument("img_dir", type=Path, help="folder of .jpg tiles to segment")
    parser.add_argument("out_dir", type=Path, help="folder for the .png masks (created if needed)")
    return parser


class PadTo:
    """Pad (replicating the border) to a multiple of ``multiple``; the prediction is cropped back."""

    def __init__(self, multiple):
        self.multiple = multiple

    def __call__(self, x, y, rng=None):
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, y


def segment(model, images, *, mean, std, batch_size, device, amp_dtype, tta=False, progress=True):
    """Class maps (H, W) uint8 numpy arrays for a list of uint8 images (3, H, W) of any sizes.

    Tiles of the same size are batched together; see :func:`utils.engine.predict` for the rest.
    """
    transform = Compose([Normalize(mean, std), PadTo(STRIDE)])
    by_size = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
    results = [None] * len(images)
    for (h, w), indices in by_size.items():
        stack = torch.stack([images[i] for i in indices]).to(device)
        classes = predict(model, stack, batch_size=batch_size, transform=transform, device=device,
                          amp_dtype=amp_dtype, tta=tta, desc=f"segment {w}x{h}", progress=progress,
                          keep=lambda out: out["out"][..., :h, :w].argmax(1).to(torch.uint8))
        for i, c in zip(indices, classes):
            results[i] = c.numpy()
    return results


def write_masks(out_dir, names, masks):
    """Write ``<stem>.png`` palette masks into ``out_dir`` all together or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".masks-", dir=out_dir))
    try:
        for name, mask in zip(names, masks):
            encode_mask(mask).save(staging / f"{Path(name).stem}.png")
        for name in names:
            os.replace(staging / f"{Path(name).stem}.png", out_dir / f"{Path(name).stem}.png")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(args):
    check_positive(args, "batch_size")
    check_writable(args.out_dir, "OUT_DIR", folder=True)
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    names, images = load_tiles(args.img_dir, device)
    model, ckpt = load_model(args.checkpoint, device, problem="p2", compile=args.compile)
    masks = segment(model, images, mean=ckpt["mean"], std=ckpt["std"], batch_size=args.batch_size,
                    device=device, amp_dtype=amp_dtype, tta=args.tta, progress=args.progress)
    write_masks(args.out_dir, names, masks)
    print(f"wrote {len(masks)} masks to {args.out_dir}")
    return {"masks": len(masks), "out_dir": str(args.out_dir)}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
