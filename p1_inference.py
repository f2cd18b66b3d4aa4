"""Grading inference for Problem 1: predict the class of every .png in a folder, write a CSV.

Usage:
    python3 p1_inference.py --checkpoint runs/p1_vgg13/best.pth IMG_DIR OUT_CSV

The model is rebuilt from the checkpoint alone (architecture, classes, normalisation), and
predicts with the test-time augmentation its run validated with (``--tta`` overrides). The CSV
has the header ``filename,label`` and one row per image, sorted by file name, with the file name
only and an integer label; it appears atomically, and its folder is created if needed.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
from pathlib import Path

from config.flags import inference_parser
from datasets.p1 import load_folder, write_predictions
from datasets.transforms import Compose, Normalize
from models import load_trained
from inference import predict, run_tta
from utils.args import check_positive, make_parser
from utils.errors import UserError, run_cli
from utils.io import check_writable
from utils.runtime import peak_memory_gib, resolve_amp, resolve_device


def get_args_parser():
    parser = make_parser(__doc__, [inference_parser("p1")])
    parser.add_argument("img_dir", type=Path, help="folder of .png images to classify")
    parser.add_argument("out_csv", type=Path, help="CSV file to write (its folder is created)")
    return parser


def main(args):
    check_positive(args, "batch_size")
    check_writable(args.out_csv, "OUT_CSV")
    if args.out_csv.is_dir():
        raise UserError(f"OUT_CSV {args.out_csv}: is a folder, not a file name")
    if args.out_csv.exists() and args.out_csv.suffix.lower() != ".csv":  # an input image, the checkpoint, ...
        raise UserError(f"OUT_CSV {args.out_csv}: exists and is not a .csv file, which this would replace; "
                        "name a new file or a .csv")
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    images = load_folder(args.img_dir, labeled=False)
    model, ckpt = load_trained(args.checkpoint, device, problem="p1", compile=args.compile)
    normalize = Compose([Normalize(ckpt["mean"], ckpt["std"])])
    tta = run_tta(ckpt["args"], args.tta)  # as the run validated, unless --tta says
    labels = predict(model, images.images.to(device), batch_size=args.batch_size, transform=normalize,
                     device=device, amp_dtype=amp_dtype, tta=tta, keep=lambda out: out.argmax(1),
                     progress=args.progress).tolist()
    write_predictions(args.out_csv, images.names, labels)
    peak = peak_memory_gib(device)
    print(f"wrote {len(labels)} predictions to {args.out_csv}"
          f"{'' if peak is None else f' (peak GPU memory {peak:.2f} GiB)'}")
    return {"predictions": len(labels), "out_csv": str(args.out_csv), "peak_memory_gib": peak, "tta": tta.mode}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
