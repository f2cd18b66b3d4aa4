"""The embedded demo: both problems end to end on real and generated data, offline, on the CPU.

Usage:
    python3 demo.py [--output-dir runs/demo] [--only p1|p2] [--p2-model lraspp|fcn32s] [--seed 0] [--device auto]

Each run goes into a folder named for its model and seed (runs/demo/p1_vgg13_seed0, ...), so demos
with other seeds stand side by side (make_report.py --compare takes them); a demo whose folders are
there already is refused unless --overwrite.

Problem 1 (one to two minutes on 2 CPU cores, the shorter in bf16 where --amp auto takes it):
  1. writes scikit-learn's bundled handwritten digits (1,797 real scans, 10 classes) in the
     course's layout: <output-dir>/data/train_50/{label}_{id}.png and .../val_50/;
  2. trains VGG13-BN on them with p1_train.py (the reference recipe's optimiser and augmentation;
     a cosine schedule and batch 64 so that a few epochs show more);
  3. runs the grading inference (p1_inference.py) on the validation folder and scores its CSV.
Problem 2 (under a minute with lraspp):
  1. writes procedural land-cover tiles (regions of each class with its own colour and texture)
     with masks in the course's colours: <output-dir>/data/p2_train/, held-out .../p2_validation/;
  2. trains LR-ASPP-MobileNetV3 on them from random weights (no download): AdamW 3e-3, cosine,
     flips, BatchNorm momentum 0.1 so that the statistics validation uses keep up with the
     weights. ``--p2-model fcn32s`` trains FCN32s instead, as the recipe's model A (AdamW 1e-4,
     no dropout): a VGG16 without BatchNorm barely starts learning from random weights in a
     few CPU minutes, so that run checks the pipeline, not the model;
  3. writes the masks with p2_inference.py and scores them with mean_iou_evaluate.py, the
     course's scorer.
Then make_report.py draws every report figure from the two runs into <output-dir>/report/.
Each part prints its time.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
import shutil
import time
from pathlib import Path

import make_report
import mean_iou_evaluate
from datasets.digits import write_digits
from datasets.p1 import csv_accuracy
from datasets.synthetic import write_tiles
from config.flags import runtime_parser, words
from utils.args import REPO, check_positive, make_parser
from utils.errors import UserError, run_cli
import p1_inference
import p1_train
import p2_inference
import p2_train

P2_TILE = 128
P2_TRAIN_TILES, P2_VAL_TILES = 64, 16
# What each Problem 2 model trains with in the demo: (epochs, flags). LR-ASPP reaches a held-out
# mIoU near 0.9 in 15 epochs of 8 steps (see the README for the spread over seeds).
P2_MODELS = {
    "lraspp": (15, ["--batch-size", "8", "--opt", "adamw", "--lr", "3e-3", "--weight-decay", "0",
                    "--sched", "cosine", "--loss", "ce", "--no-ignore-unknown", "--augment", "flip",
                    "--bn-momentum", "0.1"]),
    # The earlier demo's FCN32s run (AdamW 1e-4, no dropout), about as many steps on the new tiles.
    "fcn32s": (3, ["--batch-size", "4", "--opt", "adamw", "--lr", "1e-4", "--dropout", "0"]),
}


def get_args_parser():
    parser = make_parser(__doc__, [runtime_parser("device", "amp", "progress")])
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "demo",
                        help="folder for the demo data, runs and predictions")
    parser.add_argument("--only", choices=["p1", "p2"], default=None, help="run one problem's demo only")
    parser.add_argument("--p1-epochs", type=int, default=10, help="Problem 1 training epochs")
    parser.add_argument("--p2-model", choices=list(P2_MODELS), default="lraspp",
                        help="Problem 2 model: lraspp learns in under a minute; fcn32s is the recipe's model A")
    parser.add_argument("--p2-epochs", type=int, default=None,
                        help="Problem 2 training epochs (default: 15 for lraspp, 3 for fcn32s)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both runs (it names their folders)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the runs of a demo with this seed (refused otherwise)")
    return parser


def run_folders(args):
    """``{problem: folder}`` of the runs this demo trains: named for the model and the seed."""
    folders = {"p1": args.output_dir / f"p1_vgg13_seed{args.seed}",
               "p2": args.output_dir / f"p2_{args.p2_model}_seed{args.seed}"}
    return {p: f for p, f in folders.items() if args.only in (None, p)}


def _overwrite(args):
    return ["--overwrite"] if args.overwrite else []


def demo_p1(args, common):
    out, run = args.output_dir, run_folders(args)["p1"]
    train_dir, val_dir = write_digits(out / "data")
    print(f"Problem 1 demo data: {train_dir} and {val_dir} (scikit-learn digits, 32x32 RGB)", flush=True)
    trained = p1_train.main(p1_train.get_args_parser().parse_args([
        "--model", "vgg13", "--train-dir", str(train_dir), "--val-dir", str(val_dir),
        "--output-dir", str(run), "--epochs", str(args.p1_epochs), "--batch-size", "64",
        "--sched", "cosine", "--seed", str(args.seed), *_overwrite(args), *common]))
    pred_csv = out / f"{run.name}_val_predictions.csv"
    p1_inference.main(p1_inference.get_args_parser().parse_args([
        "--checkpoint", str(run / "best.pth"), str(val_dir), str(pred_csv), *common]))
    accuracy, n = csv_accuracy(pred_csv)
    return (f"Problem 1: VGG13-BN best val_acc {trained['best_val_acc']:.4f} (epoch {trained['best_epoch']}); "
            f"the grading CSV {pred_csv} scores {accuracy:.4f} on {n} images"), run


def demo_p2(args, common):
    out = args.output_dir
    for name in ("p2_train", "p2_validation"):  # a previous demo with more tiles leaves none behind
        shutil.rmtree(out / "data" / name, ignore_errors=True)
    train_dir = write_tiles(out / "data" / "p2_train", P2_TRAIN_TILES, size=P2_TILE, seed=0)
    val_dir = write_tiles(out / "data" / "p2_validation", P2_VAL_TILES, size=P2_TILE, seed=1, start=1000)
    print(f"Problem 2 demo data: {train_dir} and held-out {val_dir} (procedural {P2_TILE}x{P2_TILE} tiles)",
          flush=True)
    model = args.p2_model
    epochs, flags = P2_MODELS[model]
    run = run_folders(args)["p2"]
    trained = p2_train.main(p2_train.get_args_parser().parse_args([
        "--model", model, "--no-pretrained", "--train-dir", str(train_dir), "--val-dir", str(val_dir),
        "--tile-size", str(P2_TILE), "--output-dir", str(run), "--epochs", str(args.p2_epochs or epochs),
        "--seed", str(args.seed), *flags, *_overwrite(args), *common]))
    pred_dir = out / f"{run.name}_val_masks"
    p2_inference.main(p2_inference.get_args_parser().parse_args([
        "--checkpoint", str(run / "best.pth"), str(val_dir), str(pred_dir), *common]))
    scored = mean_iou_evaluate.main(mean_iou_evaluate.get_args_parser().parse_args(
        ["-g", str(val_dir), "-p", str(pred_dir)]))
    line = (f"Problem 2: {model} best val_miou {trained['best_val_miou']:.4f} (epoch {trained['best_epoch']}); "
            f"mean_iou_evaluate.py on the held-out masks {pred_dir} gives mIoU {scored['miou']:.4f}")
    if model == "fcn32s":
        line += (" (from random weights a VGG16 without BatchNorm barely starts learning in a few CPU "
                 "minutes: this run checks the pipeline; the recipe starts from ImageNet weights)")
    return line, run


def _timed(parts, name, fn, *fn_args):
    """Run ``fn(*fn_args)``, print and record how long it took under ``name``."""
    start = time.perf_counter()
    result = fn(*fn_args)
    parts.append((name, time.perf_counter() - start))
    print(f"[{name}: {parts[-1][1]:.0f} s]", flush=True)
    return result


def main(args):
    check_positive(args, "p1_epochs", "p2_epochs")
    for problem, run in run_folders(args).items():
        if run.exists() and not args.overwrite:
            raise UserError(f"{run}: a demo run of seed {args.seed} is there already; give --overwrite to replace it, "
                            "or another --seed")
    common = [w for name in ("device", "amp", "progress") for w in words(name, getattr(args, name))]
    out = args.output_dir
    summary, parts, report = [], [], ["--out", str(out / "report"), *common]
    if args.only in (None, "p1"):
        line, run = _timed(parts, "Problem 1", demo_p1, args, common)
        summary.append(line)
        report += ["--p1-run", str(run)]
    if args.only in (None, "p2"):
        line, run = _timed(parts, "Problem 2", demo_p2, args, common)
        summary.append(line)
        report += ["--p2-run", str(run), "--p2-ids", "1000", "1003", "1006"]
    # The segmenters' architectures are traced at the demo's tile size (512 takes a while on a CPU).
    report += ["--p2-arch-size", str(P2_TILE)]
    _timed(parts, "report", make_report.main, make_report.get_args_parser().parse_args(report))
    summary.append(f"report: every figure and {out / 'report' / 'index.md'} (make_report.py)")
    summary.append("time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in parts)
                   + f"; total {sum(s for _, s in parts):.0f} s")
    print("\ndemo done:\n  " + "\n  ".join(summary), flush=True)
    return {"summary": summary, "seconds": dict(parts)}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
