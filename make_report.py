"""Every report figure from training runs in one command, with report/index.md.

Usage:
    python3 make_report.py --p1-run runs/p1_vgg13 --p2-run runs/p2_deeplabv3 --out report/
    python3 make_report.py --p2-run runs/p2_fcn32s --only masks iou      # some figures only
    python3 make_report.py --compare runs/p1_vgg13 runs/p1_vgg13_lr0.01 --out report/   # recipes side by side

Figures (each also alone through --only; the feature and mask figures are also what
p1_features.py and p2_masks.py draw):
  features   p1_pca.png, p1_tsne.png: PCA and t-SNE of the second-last layer (first/middle/last epoch)
  confusion  p1_confusion.png: the row-normalised 50x50 confusion matrix of the best checkpoint
  masks      p2_mask_progress.png, p2_overlay.png: predicted masks over training, overlay view
  iou        p2_class_iou.png: per-class IoU of the best epoch
  curves     p1_curves.png, p2_curves.png: losses, validation metric and learning rate per epoch
  arch       arch_<model>.png and .txt for every registered model: blocks traced by a forward pass
index.md embeds each figure with its numbers and the command that produced each run.

--compare makes only compare.png (each run's validation metric per epoch, its best epoch marked, and
its training loss) and compare.md: a row per run with its epochs, best and last validation metric and
the flags (from args.json) whose values differ between the runs, for runs of one problem.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
import re
from pathlib import Path

import torch

from datasets import p1 as p1_data, p2 as p2_data
from datasets.p2 import CLASS_NAMES, SCORED_CLASSES
from models import get_model, get_model_spec, list_models
from figures.architecture import architecture_summary, fits_page, plot_architecture, trace_graph
from figures.plots import plot_class_iou, plot_compare, plot_confusion, plot_curves
from figures.features import feature_figures
from figures.runs import check_run, compare_runs, comparison_table, default_tile_ids, open_run, rerun_commands
from figures.masks import mask_figures
from config.flags import runtime_parser
from utils.args import REPO, check_positive, make_parser
from utils.errors import UserError, run_cli
from utils.io import atomic_write, check_writable, output_folder
from utils.run_folder import METRIC_OF, RunFolder

FIGURES = ("features", "confusion", "masks", "iou", "curves", "arch")
NUM_CLASSES = {"p1": p1_data.NUM_CLASSES, "p2": p2_data.NUM_CLASSES}


def get_args_parser():
    parser = make_parser(__doc__, [runtime_parser("device", "amp", "progress")])
    parser.add_argument("--p1-run", type=Path, default=None, help="a p1_train.py run folder")
    parser.add_argument("--p2-run", type=Path, default=None, help="a p2_train.py run folder")
    parser.add_argument("--compare", type=Path, nargs="+", default=None, metavar="RUN",
                        help="two or more run folders of one problem: write only compare.png and compare.md "
                             "(their curves and a table of their results and differing flags), no other figure")
    parser.add_argument("--p1-val-dir", type=Path, default=None,
                        help="Problem 1 validation folder (default: the run's own --val-dir)")
    parser.add_argument("--p2-val-dir", type=Path, default=None,
                        help="Problem 2 validation folder (default: the run's own --val-dir)")
    parser.add_argument("--p2-ids", nargs="+", default=None,
                        help="tiles for the mask figures (default: 0013 0062 0104, or the folder's first three)")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES), help="figures to make")
    parser.add_argument("--p2-arch-size", type=int, default=512,
                        help="tile size the segmenters' architectures are traced at (classifiers use "
                             "32x32, or the size a model resizes its input to)")
    parser.add_argument("--out", type=Path, default=REPO / "report",
                        help="folder for the figures and index.md (compare.png and compare.md with --compare)")
    return parser


def architecture(name, out, p2_size=512):
    """Trace ``name`` (random weights) and write arch_<name>.png and .txt; returns the metadata."""
    spec = get_model_spec(name)
    torch.manual_seed(0)
    model = get_model(name, num_classes=NUM_CLASSES[spec.problem])
    # A model that resizes its input (BEiT: to 224) is traced at the size it computes at.
    native = getattr(model, "input_size", None)
    size = native if native else (32, 32) if spec.problem == "p1" else (p2_size, p2_size)
    shape = (1, 3, *size)
    # The deepest level of nesting whose figure fits a page; the table lists the same blocks.
    graph = trace_graph(model, torch.randn(shape), fits=fits_page)
    blocks = graph["blocks"]
    total = sum(p.numel() for p in model.parameters())
    title = f"{name} ({total / 1e6:.2f}M parameters, input {shape[1]}x{shape[2]}x{shape[3]})"
    drawn = dict(title=title, input_shape=shape, outputs=graph["outputs"], output=graph["output"])
    meta = plot_architecture(blocks, out / f"arch_{name}.png", **drawn)
    with atomic_write(out / f"arch_{name}.txt") as f:
        f.write(architecture_summary(blocks, **drawn))
    return {**meta, "total_params": total}


def _run_section(lines, title, run, problem, records):
    metric = METRIC_OF[problem]
    best = max(records, key=lambda r: r[f"val_{metric}"])
    lines += [f"## {title}", "",
              f"Run `{run}`: {len(records)} epochs, best val {metric} **{best[f'val_{metric}']:.4f}** "
              f"at epoch {best['epoch']}."]
    commands = rerun_commands(run, problem)
    if commands:
        lines += ["", "Rerun it exactly (its args.json), or as the flags that differ from its recipe:", "", "```",
                  *commands, "```", ""]
    else:
        lines += ["", "(its args.json is missing: no command reruns it)", ""]
    return best


def compare(runs, out):
    """Write ``compare.png`` and ``compare.md`` for some runs of one problem; returns what was written."""
    check_writable(out, "--out", folder=True)
    comparison = compare_runs(runs, "--compare")
    with output_folder(out) as out:
        return _write_comparison(comparison, len(runs), out)


def _write_comparison(comparison, count, out):
    m, problem = comparison.metric, comparison.problem
    figure = plot_compare(list(comparison.records.items()), out / "compare.png", metric=m,
                          title=f"{problem}: {count} runs compared")
    lines = [f"# {problem}: {count} runs compared", "", *comparison_table(comparison), ""]
    if not comparison.differing:
        lines += ["The runs' flags are all equal (leaving aside where and how they computed).", ""]
    lines += [f"![validation {m} and training loss per epoch](compare.png)", ""]
    with atomic_write(out / "compare.md") as f:
        f.write("\n".join(lines))
    print(f"wrote the comparison to {out / 'compare.md'}")
    return {"compare.md": str(out / "compare.md"), "compare.png": figure, "metric": m,
            "rows": comparison.rows, "differing": comparison.differing}


def main(args):
    check_positive(args, "p2_arch_size")
    if args.compare is not None:
        if args.p1_run is not None or args.p2_run is not None:
            given = " and ".join(f for f, v in (("--p1-run", args.p1_run), ("--p2-run", args.p2_run)) if v)
            raise UserError(f"--compare makes only the comparison; drop {given}, or make those figures in a "
                            "second command")
        return compare(args.compare, args.out)
    if args.p1_run is None and args.p2_run is None and set(args.only) - {"arch"}:
        raise UserError("give --p1-run and/or --p2-run (or --only arch, or --compare RUN RUN ...)")
    check_writable(args.out, "--out", folder=True)
    p1 = check_run(args.p1_run, "--p1-run", "p1") if args.p1_run else None
    p2 = check_run(args.p2_run, "--p2-run", "p2") if args.p2_run else None
    with output_folder(args.out) as out:  # a report that fails part-way leaves none of its files
        return _write_report(args, p1, p2, out)


def _write_report(args, p1, p2, out):
    """The figures of ``args.only`` for the checked runs ``p1`` and ``p2``, and index.md, into ``out``."""
    lines, made = ["# Report figures", ""], {}

    if p1 is not None:
        records = RunFolder(p1).read_metrics()
        best = _run_section(lines, "Problem 1: classification", p1, "p1", records)
        if {"features", "confusion"} & set(args.only):
            inputs = open_run(p1, val_dir=args.p1_val_dir, out=out, device=args.device, amp=args.amp, problem="p1",
                              run_flag="--p1-run", val_flag="--p1-val-dir")
            feats = feature_figures(inputs, out, progress=args.progress, embeddings="features" in args.only)
            made["features"] = feats
            if "features" in args.only:
                lines += [f"t-SNE of the second-last layer ({feats['feature_dim']}-d) at epochs "
                          f"{', '.join(map(str, feats['tsne']['epochs']))}:", "", "![t-SNE](p1_tsne.png)", "",
                          "PCA of the same layer:", "", "![PCA](p1_pca.png)", ""]
            if "confusion" in args.only:
                made["confusion"] = plot_confusion(
                    feats["confusion"], out / "p1_confusion.png",
                    title=f"{feats['arch']}, epoch {feats['confusion_epoch']}: confusion on the validation set")
                lines += ["Confusion matrix (rows: true class, normalised):", "", "![confusion](p1_confusion.png)", ""]
        if "curves" in args.only:
            made["p1_curves"] = plot_curves(records, out / "p1_curves.png", metric="acc", title=f"run {p1.name}")
            lines += ["![curves](p1_curves.png)", ""]
        made["p1_best"] = best

    if p2 is not None:
        records = RunFolder(p2).read_metrics()
        best = _run_section(lines, "Problem 2: segmentation", p2, "p2", records)
        if "masks" in args.only:
            inputs = open_run(p2, val_dir=args.p2_val_dir, out=out, device=args.device, amp=args.amp, problem="p2",
                              run_flag="--p2-run", val_flag="--p2-val-dir")
            ids = args.p2_ids or default_tile_ids(inputs.val_dir, "--p2-ids")
            made["masks"] = mask_figures(inputs, ids, out, flag="--p2-ids", progress=args.progress)
            lines += [f"Predicted masks at epochs {', '.join(map(str, made['masks']['progress']['epochs']))}:", "",
                      "![masks](p2_mask_progress.png)", "", "Overlay view:", "", "![overlay](p2_overlay.png)", ""]
        if "iou" in args.only:
            ious = [best.get(f"val_iou_{i}") for i in range(SCORED_CLASSES)]
            made["iou"] = plot_class_iou(ious, CLASS_NAMES[:SCORED_CLASSES], out / "p2_class_iou.png",
                                         title=f"{p2.name}, epoch {best['epoch']}: per-class IoU")
            lines += ["| class | IoU |", "|---|---|"]
            lines += [f"| {i} {CLASS_NAMES[i]} | {'absent' if v is None else f'{v:.4f}'} |" for i, v in enumerate(ious)]
            lines += ["", "![per-class IoU](p2_class_iou.png)", ""]
        if "curves" in args.only:
            made["p2_curves"] = plot_curves(records, out / "p2_curves.png", metric="miou", title=f"run {p2.name}")
            lines += ["![curves](p2_curves.png)", ""]
        made["p2_best"] = best

    if "arch" in args.only:
        lines += ["## Architectures", "", "Blocks traced by a forward pass (output shape and parameters); "
                  "the text tables are beside each figure.", ""]
        made["arch"] = {}
        for name in list_models():
            meta = architecture(name, out, args.p2_arch_size)
            made["arch"][name] = meta
            lines += [f"### {name}: {meta['total_params']:,} parameters", "",
                      f"![{name}](arch_{name}.png) ([table](arch_{name}.txt))", ""]

    with atomic_write(out / "index.md") as f:
        f.write("\n".join(lines))
    _drop_stale(out, "\n".join(lines))
    print(f"wrote the report to {out / 'index.md'}")
    return made


# The files a report writes (compare.* belong to --compare's own set).
_REPORT_FILES = ("p1_*.png", "p2_*.png", "arch_*.png", "arch_*.txt")


def _drop_stale(out, index):
    """Remove the figures an earlier report left in ``out`` that this one's ``index`` (which links
    every file it wrote) does not name: a report with fewer sections would otherwise stand beside
    the old figures of the others."""
    named = set(re.findall(r"\]\(([^)/]+)\)", index))
    for pattern in _REPORT_FILES:
        for path in out.glob(pattern):
            if path.name not in named:
                path.unlink()


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
