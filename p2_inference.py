"""Grading inference for Problem 2: one palette mask per .jpg tile of a folder.

Usage:
    python3 p2_inference.py --checkpoint runs/p2_deeplabv3/best.pth IMG_DIR OUT_DIR

Every ``xxxx.jpg`` of IMG_DIR (other files, such as the validation folder's ``_mask.png``, are
ignored) gets ``OUT_DIR/xxxx.png`` (so ``0013_sat.jpg`` -> ``0013_sat.png``): a palette PNG of
the input's size in the course's seven colours, predicted with the test-time augmentation the
checkpoint's run validated with (``--tta`` and ``--tta-scales`` override). Tiles are decoded on the CPU, by the
decoder training and validation use; tiles of any size are padded to a multiple of 32 and the
prediction cropped back. Masks are written to a temporary folder and moved into OUT_DIR
only when all of them are done, so a failure leaves nothing behind.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
from pathlib import Path

from config.flags import check, inference_parser
from datasets.p2 import load_tiles, write_masks
from datasets.presets import p2_inference_transform
from models import load_trained
from inference import run_tta, segment
from utils.args import check_positive, make_parser
from utils.errors import UserError, run_cli
from utils.io import check_writable
from utils.runtime import peak_memory_gib, resolve_amp, resolve_device


def get_args_parser():
    parser = make_parser(__doc__, [inference_parser("p2")])
    parser.add_argument("img_dir", type=Path, help="folder of .jpg tiles to segment")
    parser.add_argument("out_dir", type=Path, help="folder for the .png masks (created if needed)")
    return parser


def main(args):
    check_positive(args, "batch_size")
    if args.tta_scales is not None:  # (none: the run's)
        check({"tta_scales": args.tta_scales}, "p2")
    check_writable(args.out_dir, "OUT_DIR", folder=True)
    if args.out_dir.resolve() == args.img_dir.resolve():
        raise UserError(f"OUT_DIR {args.out_dir} is IMG_DIR: the masks would be written among the tiles (and a "
                        "validation folder's ground truth); give another folder")
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    names, images = load_tiles(args.img_dir)
    ours = {f"{Path(name).stem}.png" for name in names}
    others = sorted(p.name for p in args.out_dir.glob("*.png") if p.name not in ours) if args.out_dir.is_dir() else []
    if others:
        # mean_iou_evaluate.py (and the course's scorer) pair masks by sorted name: a stray one shifts every pair.
        raise UserError(f"OUT_DIR {args.out_dir} holds {len(others)} masks these tiles do not produce (such as "
                        f"{others[0]}); empty it or give another folder")
    model, ckpt = load_trained(args.checkpoint, device, problem="p2", compile=args.compile)
    # As the run validated, unless --tta / --tta-scales say otherwise.
    tta = run_tta(ckpt["args"], args.tta, args.tta_scales)
    masks = segment(model, images, transform=p2_inference_transform(mean=ckpt["mean"], std=ckpt["std"]),
                    batch_size=args.batch_size, device=device, amp_dtype=amp_dtype, tta=tta,
                    progress=args.progress)
    write_masks(args.out_dir, names, masks)
    peak = peak_memory_gib(device)
    print(f"wrote {len(masks)} masks to {args.out_dir}{'' if peak is None else f' (peak GPU memory {peak:.2f} GiB)'}")
    return {"masks": len(masks), "out_dir": str(args.out_dir), "peak_memory_gib": peak, "tta": tta.mode,
            "tta_scales": list(tta.scales)}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
