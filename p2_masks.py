"""Problem 2 mask figures: predictions of chosen tiles at the first, middle and last epoch.

Usage:
    python3 p2_masks.py --run runs/p2_deeplabv3 --val-dir hw1_data/p2_data/validation --out report/

p2_mask_progress.png has a row per tile (default 0013, 0062, 0104) and the columns input,
prediction at the first / middle / last epoch snapshot, ground truth. p2_overlay.png is the
course visualiser's view of the same tiles: class colours blended over the photo (darkened, so
that white shows) with the class boundaries drawn, for the ground truth and the prediction of
best.pth, the checkpoint grading uses.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
from figures.runs import default_tile_ids, open_run
from figures.masks import mask_figures
from config.flags import report_parser
from utils.args import make_parser
from utils.errors import run_cli
from utils.io import output_folder


def get_args_parser():
    parser = make_parser(__doc__, [report_parser("p2")])
    parser.add_argument("--ids", nargs="+", default=None,
                        help="tile ids to show (default: 0013 0062 0104, the report's, or else the "
                             "folder's first three)")
    return parser


def main(args):
    inputs = open_run(args.run, val_dir=args.val_dir, out=args.out, device=args.device, amp=args.amp, problem="p2")
    args.ids = args.ids or default_tile_ids(inputs.val_dir, "--ids")
    with output_folder(args.out) as out:  # figures that fail part-way leave none of their files
        return mask_figures(inputs, args.ids, out, progress=args.progress)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
