"""Problem 1 feature figures: PCA and t-SNE of the second-last layer on the validation set.

Usage:
    python3 p1_features.py --run runs/p1_vgg13 --val-dir hw1_data/p1_data/val_50 --out report/

Extracts the second-last-layer features of every validation image (batched, inference mode)
from the run's snapshots and draws p1_pca.png (PCA of the best checkpoint, with the last
snapshot beside it) and p1_tsne.png (t-SNE at the first, a middle and the last snapshot, side by
side, one colour per class throughout). scikit-learn's PCA and TSNE with a fixed random_state.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
from figures.features import feature_figures
from figures.runs import open_run
from config.flags import report_parser
from utils.args import check_positive, make_parser
from utils.errors import run_cli
from utils.io import output_folder


def get_args_parser():
    parser = make_parser(__doc__, [report_parser("p1")])
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    return parser


def main(args):
    check_positive(args, "batch_size")
    inputs = open_run(args.run, val_dir=args.val_dir, out=args.out, device=args.device, amp=args.amp, problem="p1")
    with output_folder(args.out) as out:  # figures that fail part-way leave none of their files
        return feature_figures(inputs, out, batch_size=args.batch_size, progress=args.progress)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
