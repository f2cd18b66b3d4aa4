"""The embedded demo: Problem 1 end to end on real images, offline, on the CPU in about two minutes.

Usage:
    python3 demo.py [--output-dir runs/demo] [--epochs 10] [--device auto]

1. Writes scikit-learn's bundled handwritten digits (1,797 real scans, 10 classes) in the
   course's layout: <output-dir>/data/train_50/{label}_{id}.png and .../val_50/.
2. Trains VGG13-BN on them with p1_train.py (the reference recipe's optimiser and augmentation;
   a cosine schedule and batch 64 so that a few epochs show more).
3. Runs the grading inference (p1_inference.py) on the validation folder and scores its CSV.
"""
import csv
from pathlib import Path

import p1_inference
import p1_train
from datasets.digits import write_digits
from datasets.p1 import parse_label
from utils.args import REPO, make_parser, runtime_parser
from utils.errors import run_cli


def get_args_parser():
    parser = make_parser(__doc__, [runtime_parser()])
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "demo",
                        help="folder for the demo data, run and predictions (replaced on each run)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    return parser


def csv_accuracy(path):
    """Share of rows of a ``filename,label`` CSV whose label is the one in the file name."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(int(r["label"]) == parse_label(Path(r["filename"])) for r in rows) / len(rows), len(rows)


def main(args):
    out = args.output_dir
    train_dir, val_dir = write_digits(out / "data")
    print(f"demo data: {train_dir} and {val_dir} (scikit-learn digits, 32x32 RGB)", flush=True)
    common = ["--device", args.device, "--amp", args.amp, "--progress" if args.progress else "--no-progress"]
    train_args = p1_train.get_args_parser().parse_args([
        "--model", "vgg13", "--train-dir", str(train_dir), "--val-dir", str(val_dir),
        "--output-dir", str(out / "p1_vgg13"), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--sched", "cosine", "--overwrite", *common])
    trained = p1_train.main(train_args)
    pred_csv = out / "p1_val_predictions.csv"
    infer_args = p1_inference.get_args_parser().parse_args([
        "--checkpoint", str(out / "p1_vgg13" / "best.pth"), str(val_dir), str(pred_csv), *common])
    p1_inference.main(infer_args)
    accuracy, n = csv_accuracy(pred_csv)
    print(f"\ndemo done: VGG13-BN best val_acc {trained['best_val_acc']:.4f} (epoch {trained['best_epoch']}); "
          f"hw1_1-style CSV {pred_csv} scores {accuracy:.4f} on {n} images", flush=True)
    return {"best_val_acc": trained["best_val_acc"], "csv_accuracy": accuracy, "csv": str(pred_csv)}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
