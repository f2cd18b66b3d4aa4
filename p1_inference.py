"""Grading inference for Problem 1: predict the class of every .png in a folder, write a CSV.

Usage:
    python3 p1_inference.py --checkpoint runs/p1_vgg13/best.pth IMG_DIR OUT_CSV

The model is rebuilt from the checkpoint alone (architecture, classes, normalisation). The CSV
has the header ``filename,label`` and one row per image, sorted by file name, with the file name
only and an integer label; it appears atomically, and its folder is created if needed.
"""
import csv
from pathlib import Path

import torch

from datasets.p1 import load_folder
from datasets.transforms import Compose, Normalize
from models import get_model
from utils.args import REPO, check_positive, inference_parser, make_parser
from utils.checkpoint import load_checkpoint
from utils.engine import predict
from utils.errors import UserError, brief, run_cli
from utils.io import atomic_write, check_writable
from utils.runtime import place_model, resolve_amp, resolve_device


def get_args_parser():
    parser = make_parser(__doc__, [inference_parser("p1")])
    parser.add_argument("img_dir", type=Path, help="folder of .png images to classify")
    parser.add_argument("out_csv", type=Path, help="CSV file to write (its folder is created)")
    return parser


def load_model(path, device, problem="p1", compile=False):
    """Rebuild a model of ``problem`` from its checkpoint alone; returns ``(model, checkpoint)``.

    With ``compile`` the model comes back through ``torch.compile``.
    """
    path = Path(path)
    if not path.is_file() and path.parent == REPO / "checkpoints":
        raise UserError(f"{path}: no such checkpoint file (bash hw1_download.sh fetches the trained "
                        "checkpoints listed in checkpoints.txt)")
    ckpt = load_checkpoint(path, problem=problem)
    try:
        model = get_model(ckpt["arch"], pretrained=False, **ckpt["model_kwargs"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"{path}: checkpoint does not match its model {ckpt['arch']!r} ({brief(e)})") from None
    model = place_model(model, device).eval()
    return (torch.compile(model) if compile else model), ckpt


def write_predictions(path, names, labels):
    """Write ``filename,label`` rows atomically, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(zip(names, labels))


def main(args):
    check_positive(args, "batch_size")
    check_writable(args.out_csv, "OUT_CSV")
    if args.out_csv.is_dir():
        raise UserError(f"OUT_CSV {args.out_csv}: is a folder, not a file name")
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    images = load_folder(args.img_dir, labeled=False)
    model, ckpt = load_model(args.checkpoint, device, compile=args.compile)
    normalize = Compose([Normalize(ckpt["mean"], ckpt["std"])])
    labels = predict(model, images.images.to(device), batch_size=args.batch_size, transform=normalize,
                     device=device, amp_dtype=amp_dtype, tta=args.tta, keep=lambda out: out.argmax(1),
                     progress=args.progress).tolist()
    write_predictions(args.out_csv, images.names, labels)
    print(f"wrote {len(labels)} predictions to {args.out_csv}")
    return {"predictions": len(labels), "out_csv": str(args.out_csv)}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
