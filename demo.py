"""The embedded demo: both problems end to end on real and generated data, offline, on the CPU.

Usage:
    python3 demo.py [--output-dir runs/demo] [--only p1|p2] [--device auto]

Problem 1 (about two minutes):
  1. writes scikit-learn's bundled handwritten digits (1,797 real scans, 10 classes) in the
     course's layout: <output-dir>/data/train_50/{label}_{id}.png and .../val_50/;
  2. trains VGG13-BN on them with p1_train.py (the reference recipe's optimiser and augmentation;
     a cosine schedule and batch 64 so that a few epochs show more);
  3. runs the grading inference (p1_inference.py) on the validation folder and scores its CSV.
Problem 2 (about two minutes):
  1. writes procedural land-cover tiles (regions of each class with its own colour and texture)
     with masks in the course's colours: <output-dir>/data/p2_train/, .../p2_validation/;
  2. trains FCN32s on them from random weights (no download; 128x128 tiles, AdamW 1e-4, no
     dropout). A VGG16 without BatchNorm barely starts learning in these few CPU steps: this
     checks the pipeline end to end, while the recipe starts from ImageNet VGG16 weights;
  3. writes the masks with p2_inference.py and scores them with mean_iou_evaluate.py.
Then make_report.py draws every report figure from the two runs into <output-dir>/report/.
"""
import csv
from pathlib import Path

import make_report
import mean_iou_evaluate
import p1_inference
import p1_train
import p2_inference
import p2_train
from datasets.digits import write_digits
from datasets.p1 import parse_label
from datasets.synthetic import write_tiles
from utils.args import REPO, make_parser, runtime_parser
from utils.errors import run_cli

P2_TILE = 128


def get_args_parser():
    parser = make_parser(__doc__, [runtime_parser()])
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "demo",
                        help="folder for the demo data, runs and predictions (replaced on each run)")
    parser.add_argument("--only", choices=["p1", "p2"], default=None, help="run one problem's demo only")
    parser.add_argument("--p1-epochs", type=int, default=10, help="Problem 1 training epochs")
    parser.add_argument("--p2-epochs", type=int, default=6, help="Problem 2 training epochs")
    return parser


def csv_accuracy(path):
    """Share of rows of a ``filename,label`` CSV whose label is the one in the file name."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(int(r["label"]) == parse_label(Path(r["filename"])) for r in rows) / len(rows), len(rows)


def demo_p1(args, common):
    out = args.output_dir
    train_dir, val_dir = write_digits(out / "data")
    print(f"Problem 1 demo data: {train_dir} and {val_dir} (scikit-learn digits, 32x32 RGB)", flush=True)
    trained = p1_train.main(p1_train.get_args_parser().parse_args([
        "--model", "vgg13", "--train-dir", str(train_dir), "--val-dir", str(val_dir),
        "--output-dir", str(out / "p1_vgg13"), "--epochs", str(args.p1_epochs), "--batch-size", "64",
        "--sched", "cosine", "--overwrite", *common]))
    pred_csv = out / "p1_val_predictions.csv"
    p1_inference.main(p1_inference.get_args_parser().parse_args([
        "--checkpoint", str(out / "p1_vgg13" / "best.pth"), str(val_dir), str(pred_csv), *common]))
    accuracy, n = csv_accuracy(pred_csv)
    return (f"Problem 1: VGG13-BN best val_acc {trained['best_val_acc']:.4f} (epoch {trained['best_epoch']}); "
            f"the grading CSV {pred_csv} scores {accuracy:.4f} on {n} images")


def demo_p2(args, common):
    out = args.output_dir
    train_dir = write_tiles(out / "data" / "p2_train", 24, size=P2_TILE, seed=0)
    val_dir = write_tiles(out / "data" / "p2_validation", 8, size=P2_TILE, seed=1, start=1000)
    print(f"Problem 2 demo data: {train_dir} and {val_dir} (procedural {P2_TILE}x{P2_TILE} tiles)", flush=True)
    trained = p2_train.main(p2_train.get_args_parser().parse_args([
        "--model", "fcn32s", "--no-pretrained", "--train-dir", str(train_dir), "--val-dir", str(val_dir),
        "--tile-size", str(P2_TILE), "--output-dir", str(out / "p2_fcn32s"), "--epochs", str(args.p2_epochs),
        "--batch-size", "4", "--opt", "adamw", "--lr", "1e-4", "--dropout", "0", "--overwrite", *common]))
    pred_dir = out / "p2_val_masks"
    p2_inference.main(p2_inference.get_args_parser().parse_args([
        "--checkpoint", str(out / "p2_fcn32s" / "best.pth"), str(val_dir), str(pred_dir), *common]))
    scored = mean_iou_evaluate.main(mean_iou_evaluate.get_args_parser().parse_args(
        ["-g", str(val_dir), "-p", str(pred_dir)]))
    return (f"Problem 2: FCN32s best val_miou {trained['best_val_miou']:.4f} (epoch {trained['best_epoch']}); "
            f"mean_iou_evaluate.py on {pred_dir} gives {scored['miou']:.4f}. From random weights, a VGG16 "
            "without BatchNorm barely starts learning in these few CPU steps: this part checks the "
            "pipeline end to end; the recipe starts from ImageNet VGG16 weights on a GPU")


def main(args):
    common = ["--device", args.device, "--amp", args.amp, "--progress" if args.progress else "--no-progress"]
    out = args.output_dir
    summary, report = [], ["--out", str(out / "report"), *common]
    if args.only in (None, "p1"):
        summary.append(demo_p1(args, common))
        report += ["--p1-run", str(out / "p1_vgg13")]
    if args.only in (None, "p2"):
        summary.append(demo_p2(args, common))
        report += ["--p2-run", str(out / "p2_fcn32s"), "--p2-ids", "1000", "1003", "1006"]
    make_report.main(make_report.get_args_parser().parse_args(report))
    summary.append(f"report: every figure and {out / 'report' / 'index.md'} (make_report.py)")
    print("\ndemo done:\n  " + "\n  ".join(summary), flush=True)
    return {"summary": summary}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
