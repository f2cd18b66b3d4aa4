"""Benchmark: --recipe reference against --recipe strong, side by side, on held-out images.

Usage:
    python3 benchmarks/recipes.py --problem p1 [--epochs 10] [--seeds 0 1 2] [--device cpu]
    python3 benchmarks/recipes.py --problem p2 [--epochs 6] [--seeds 0 1] [--models fcn32s deeplabv3]
    python3 benchmarks/recipes.py --problem p1 --ablate      # strong with each of its parts off

Problem 1: scikit-learn's bundled handwritten digits (1,797 real scans, offline), split per class
into training (60%), selection (20%: validation, which picks best.pth) and a held-out test set
(20%) that neither training nor selection sees. Each recipe trains VGG13-BN for the same epochs
at the same batch (the same training compute) and every seed; best.pth then grades the held-out
folder through p1_inference.py (with the TTA its run validated with), and the accuracy of the
CSV is the figure. Problem 2: procedural tiles (datasets/synthetic.py), training / selection /
held-out, each segmenter from random weights (the pretrained weights are out of reach offline),
held-out mIoU from p2_inference.py's masks scored by mean_iou_evaluate.py. Prints one line per run
and a table of means, and the difference strong - reference.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mean_iou_evaluate  # noqa: E402
import p1_inference  # noqa: E402
import p1_train  # noqa: E402
import p2_inference  # noqa: E402
import p2_train  # noqa: E402
from datasets.digits import write_digits  # noqa: E402
from datasets.p1 import csv_accuracy  # noqa: E402
from datasets.synthetic import write_tiles  # noqa: E402
from utils.recipes import RECIPES  # noqa: E402

# The parts of the strong recipes that --ablate switches off one at a time (flags as parsed).
ABLATIONS = {
    "p1": {"nesterov": ["--no-nesterov"], "warmup": ["--warmup", "0"], "norm-bias-decay": ["--norm-bias-decay"],
           "label-smoothing": ["--label-smoothing", "0"], "random-erasing": ["--random-erasing", "0"],
           "tta": ["--tta", "none"]},
    "p2": {"d4": ["--augment", "flip"], "color-jitter": ["--color-jitter", "0"],
           "class-weights": ["--class-weights", "none"], "tta": ["--tta", "none"]},
}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", choices=["p1", "p2"], default="p1")
    p.add_argument("--models", nargs="+", default=None,
                   help="models to compare (default: vgg13 for p1, fcn32s and deeplabv3 for p2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for both recipes (default: 10 p1, 6 p2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch for both recipes (default: the recipes' own, equal for both)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tile-size", type=int, default=128, help="p2: procedural tile size")
    p.add_argument("--tiles", type=int, nargs=3, default=[48, 16, 16], metavar=("TRAIN", "SELECT", "TEST"),
                   help="p2: procedural tiles for training, selection and the held-out test")
    p.add_argument("--ablate", action="store_true",
                   help="also run the strong recipe with each of its parts off (first seed only)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the data and runs here (default: temporary)")
    return p


def score(runs, data, model, recipe, seed, extra, args):
    """Train one run on the training folder (best.pth picked on the selection folder), grade the
    held-out folder with the problem's inference script, and return (selection, held-out) figures."""
    train, select, test = data
    out = runs / f"{model}_{recipe}_{seed}_{'_'.join(extra)}".replace("-", "")
    flags = ["--model", model, "--recipe", recipe, "--train-dir", str(train), "--val-dir", str(select),
             "--output-dir", str(out), "--epochs", str(args.epochs), "--seed", str(seed), "--device", args.device,
             "--no-progress", "--overwrite", "--save-epochs", *extra]
    if args.batch_size:
        flags += ["--batch-size", str(args.batch_size)]
    if args.problem == "p2":
        flags += ["--no-pretrained", "--tile-size", str(args.tile_size)]
    train_script, inference = (p1_train, p1_inference) if args.problem == "p1" else (p2_train, p2_inference)
    result = train_script.main(train_script.get_args_parser().parse_args(flags))
    graded = out / ("test.csv" if args.problem == "p1" else "test_masks")
    inference.main(inference.get_args_parser().parse_args(
        ["--checkpoint", str(out / "best.pth"), "--device", args.device, "--no-progress", str(test), str(graded)]))
    if args.problem == "p1":
        return result["best_val_acc"], csv_accuracy(graded)[0]
    scored = mean_iou_evaluate.main(mean_iou_evaluate.get_args_parser().parse_args(
        ["-g", str(test), "-p", str(graded)]))
    return result["best_val_miou"], scored["miou"]


def main(args):
    args.models = args.models or (["vgg13"] if args.problem == "p1" else ["fcn32s", "deeplabv3"])
    args.epochs = args.epochs or (10 if args.problem == "p1" else 6)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="recipes-"))
    if args.problem == "p1":
        data, metric = write_digits(work / "digits", val_fraction=0.2, test_fraction=0.2), "accuracy"
    else:
        n_train, n_select, n_test = args.tiles
        data = (write_tiles(work / "tiles" / "train", n_train, size=args.tile_size, seed=0),
                write_tiles(work / "tiles" / "select", n_select, size=args.tile_size, seed=1, start=5000),
                write_tiles(work / "tiles" / "test", n_test, size=args.tile_size, seed=2, start=9000))
        metric = "mIoU"
    lines, table = [], {}
    for model in args.models:
        variants = [("reference", []), ("strong", [])]
        if args.ablate:
            variants += [(f"strong without {part}", flags) for part, flags in ABLATIONS[args.problem].items()]
        for name, extra in variants:
            seeds = args.seeds if not extra else args.seeds[:1]
            for seed in seeds:
                start = time.perf_counter()
                selected, held_out = score(work / "runs", data, model, name.split()[0], seed, extra, args)
                seconds = time.perf_counter() - start
                table.setdefault((model, name), []).append(held_out)
                lines.append(f"{model:10s} {name:32s} seed {seed}: selection {metric} {selected:.4f}, "
                             f"held-out {metric} {held_out:.4f}  ({seconds:.0f} s)")
                print(lines[-1], flush=True)
    batches = ", ".join(f"{m} {args.batch_size or RECIPES[args.problem][m]['reference']['batch_size']}"
                        for m in args.models)
    print(f"\n{args.problem}, {args.epochs} epochs, batch {batches} (the same for both recipes), held-out {metric}:")
    print(f"| model | recipe | seeds | held-out {metric} per seed | mean |")
    print("|---|---|---|---|---|")
    for (model, name), values in table.items():
        print(f"| {model} | {name} | {len(values)} | {' '.join(f'{v:.4f}' for v in values)} | "
              f"{statistics.mean(values):.4f} |")
    for model in args.models:
        ref, strong = table[(model, "reference")], table[(model, "strong")]
        diffs = [s - r for s, r in zip(strong, ref)]
        print(f"{model}: strong - reference = {statistics.mean(diffs):+.4f} on average "
              f"(per seed: {' '.join(f'{d:+.4f}' for d in diffs)})")
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
