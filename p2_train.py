"""Train a Problem 2 segmenter: VGG16-FCN32s (model A) or DeepLabv3-ResNet50 (model B).

Usage:
    python3 p2_train.py --model fcn32s                       # the reference recipe, 100 epochs
    python3 p2_train.py --model deeplabv3 --cache-dir cache  # decoded tiles kept for the next run
    python3 p2_train.py --resume runs/p2_deeplabv3/last.pth  # continue an interrupted run
    torchrun --nproc_per_node=4 p2_train.py --model deeplabv3 --batch-size 16   # 4 GPUs

Flags marked 'recipe' default to the chosen model's reference recipe (../shared/RECIPES.md):
  fcn32s:    SGD lr 0.003 momentum 0.9, constant lr, batch 8, 100 epochs, cross-entropy with
             Unknown included, no augmentation
  deeplabv3: SGD lr 0.1 momentum 0.9, weight decay 1e-5, OneCycle (lr only), batch 4, 100 epochs,
             per-pixel focal loss (alpha 0.2, gamma 2) on main + auxiliary outputs with Unknown
             ignored, horizontal and vertical flips
Tiles are decoded once into uint8 tensors, kept on the GPU when they take under 15% of its free
memory (an 80 GB card, not the course's 11 GB one), else in host memory, where each batch is gathered, pinned and copied to the device
without blocking; flips run on the device. Validation mIoU is the course's: one confusion
matrix over every validation pixel, classes 0-5 averaged. The run folder is as in p1_train.py.
"""
import argparse
from pathlib import Path


from datasets.loader import TensorBatches, count_batches, fits_on
from datasets.p2 import NUM_CLASSES, SCORED_CLASSES, TILE_SIZE, UNKNOWN, load_pairs
from datasets.presets import P2_AUGMENTS, p2_transforms
from models import get_model_spec, list_models
from utils.args import REPO, args_to_dict, make_parser, training_parser
from utils.errors import run_cli
from utils.losses import SegmentationLoss
from utils.metrics import MeanIoU
from utils.run import build_model, build_optimization, finished_run, fit, prepare_run, resolve_run_args
from utils.runtime import seed_everything

RECIPES = {
    "fcn32s": dict(epochs=100, batch_size=8, opt="sgd", lr=0.003, momentum=0.9, weight_decay=0.0,
                   sched="constant", loss="ce", ignore_unknown=False, aux_weight=0.0, augment="none",
                   pretrained=True),
    "deeplabv3": dict(epochs=100, batch_size=4, opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-5,
                      sched="onecycle", loss="focal", ignore_unknown=True, aux_weight=1.0, augment="flip",
                      pretrained=True),
}
DEFAULTS = dict(model="fcn32s", train_dir=REPO / "hw1_data" / "p2_data" / "train",
                val_dir=REPO / "hw1_data" / "p2_data" / "validation", focal_alpha=0.2, focal_gamma=2.0,
                tile_size=TILE_SIZE, seed=0, eval_batch_size=8, dropout=0.5)


def get_args_parser():
    parser = make_parser(__doc__, [training_parser()])
    g = parser.add_argument_group("problem 2")
    g.add_argument("--model", default=None, choices=list_models("p2"), help="network (default: fcn32s)")
    g.add_argument("--train-dir", type=Path, default=None,
                   help="folder of xxxx_sat.jpg + xxxx_mask.png training pairs (default: hw1_data/p2_data/train)")
    g.add_argument("--val-dir", type=Path, default=None,
                   help="folder of validation pairs (default: hw1_data/p2_data/validation)")
    g.add_argument("--loss", default=None, choices=["ce", "focal"], help="per-pixel loss (recipe)")
    g.add_argument("--focal-alpha", type=float, default=None, help="focal loss alpha (default: 0.2)")
    g.add_argument("--focal-gamma", type=float, default=None, help="focal loss gamma (default: 2)")
    g.add_argument("--aux-weight", type=float, default=None,
                   help="weight of the auxiliary head's loss, for models that have one (recipe)")
    g.add_argument("--ignore-unknown", default=None, action=argparse.BooleanOptionalAction,
                   help="leave Unknown pixels out of the loss (recipe)")
    g.add_argument("--augment", default=None, choices=P2_AUGMENTS, help="augmentation preset (recipe)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="keep the decoded tiles here as .npy and memory-map them on later runs")
    g.add_argument("--tile-size", type=int, default=None,
                   help="size every training and validation tile and mask must have (default: 512)")
    g.add_argument("--dropout", type=float, default=None, help="fcn32s: dropout after fc6/fc7 (default: 0.5)")
    return parser


def main(args):
    ckpt = resolve_run_args(args, problem="p2", recipes=RECIPES, defaults=DEFAULTS)
    resumed = ckpt is not None
    device, amp_dtype, ctx, run = prepare_run(args, ckpt)
    train_set = load_pairs(args.train_dir, size=args.tile_size, cache_dir=args.cache_dir)
    val_set = load_pairs(args.val_dir, size=args.tile_size, cache_dir=args.cache_dir)
    if fits_on(device, train_set.nbytes + val_set.nbytes):
        # 2,257 tiles are about 2.3 GB: on a large GPU they live there, as Problem 1's images do;
        # on an 11 GB card that would leave too little for DeepLabv3's activations.
        train_set, val_set = train_set.to(device), val_set.to(device)

    seed_everything(args.seed)
    spec = get_model_spec(args.model)
    model, options = build_model(args, num_classes=NUM_CLASSES, device=device, resumed=resumed)
    train_tf, eval_tf = p2_transforms(args.augment, mean=spec.mean, std=spec.std)
    criterion = SegmentationLoss(args.loss, alpha=args.focal_alpha, gamma=args.focal_gamma,
                                 ignore_index=UNKNOWN if args.ignore_unknown else None,
                                 aux_weight=args.aux_weight)

    def train_batches(rng):
        return TensorBatches(train_set.images, train_set.masks, args.batch_size,
                             generator=rng.cpu, drop_small=True,
                             rank=ctx.rank, world_size=ctx.world_size, device=device)

    steps = count_batches(len(train_set), args.batch_size, ctx.world_size, drop_small=True)
    optimizer, scheduler, scaler, start_epoch, best_metric, best_epoch = build_optimization(
        args, model, steps_per_epoch=steps, amp_dtype=amp_dtype, device=device, ckpt=ckpt)
    if start_epoch >= args.epochs:
        return finished_run(args, ckpt, "miou")

    if ctx.is_main:
        run.start(args_to_dict(args))
        print(f"training {args.model} on {len(train_set)} tiles ({args.train_dir}), validating on "
              f"{len(val_set)} ({args.val_dir}); {ctx.world_size} x {device.type}, amp {args.amp}; "
              f"output {args.output_dir}", flush=True)
    meta = {"problem": "p2", "arch": args.model, "model_kwargs": {"num_classes": NUM_CLASSES, **options},
            "num_classes": NUM_CLASSES, "mean": list(spec.mean), "std": list(spec.std),
            "args": args_to_dict(args)}
    return fit(
        model=model, criterion=criterion, eval_criterion=criterion, optimizer=optimizer,
        scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype, device=device,
        make_train_batches=train_batches, train_transform=train_tf,
        val_batches=TensorBatches(val_set.images, val_set.masks, args.eval_batch_size, device=device,
                                 rank=ctx.rank, world_size=ctx.world_size),
        eval_transform=eval_tf, make_metric=lambda: MeanIoU(NUM_CLASSES, SCORED_CLASSES),
        metric_name="miou", run=run, start_epoch=start_epoch, epochs=args.epochs,
        best_metric=best_metric, best_epoch=best_epoch, seed=args.seed,
        save_epochs=set(args.save_epochs), meta=meta, partial=ckpt.get("partial") if resumed else None,
        ctx=ctx, compile=args.compile, tta=args.tta, progress=args.progress)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
