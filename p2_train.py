"""Train a Problem 2 segmenter: VGG16-FCN32s (model A), DeepLabv3-ResNet50 (model B) or LR-ASPP MobileNetV3.

Usage:
    python3 p2_train.py --model fcn32s                       # the reference recipe, 100 epochs
    python3 p2_train.py --model deeplabv3 --cache-dir cache  # decoded tiles kept for the next run
    python3 p2_train.py --resume runs/p2_deeplabv3/last.pth  # continue an interrupted run
    torchrun --nproc_per_node=4 p2_train.py --model deeplabv3 --batch-size 16   # 4 GPUs

Tiles are decoded once into uint8 tensors, kept on the GPU when they take under 15% of its free
memory (an 80 GB card, not the course's 11 GB one), else in host memory, where each batch is
gathered, pinned and copied to the device without blocking; flips run on the device. Validation
mIoU is the course's: one confusion matrix over every validation pixel, classes 0-5 averaged.
What the run folder holds is described once, in training/run.py.
"""
import argparse
from pathlib import Path

from datasets.loader import fits_on
from datasets.p2 import CLASS_NAMES, NUM_CLASSES, SCORED_CLASSES, UNKNOWN, class_weights, load_pairs
from datasets.presets import P2_AUGMENTS, p2_transforms
from models import list_models
from training.losses import SegmentationLoss
from training.recipes import DEFAULTS, RECIPE_NAMES, describe
from training.setup import RunSetup
from training.trainer import Task, Trainer
from utils import distributed
from utils.args import float_list, make_parser, segmentation_tta_parser, show_defaults, training_parser
from utils.errors import run_cli
from utils.metrics import MeanIoU


def get_args_parser():
    parser = make_parser(__doc__, [training_parser(RECIPE_NAMES), segmentation_tta_parser()], epilog=describe("p2"))
    g = parser.add_argument_group("problem 2")
    g.add_argument("--model", default=None, choices=list_models("p2"),
                   help="network: fcn32s (VGG16-FCN32s, model A), deeplabv3 (DeepLabv3-ResNet50 on COCO weights, "
                        "model B) or lraspp (LR-ASPP on MobileNetV3-Large, 3.2M parameters: fast enough for the "
                        "CPU demo and small GPUs)")
    g.add_argument("--train-dir", type=Path, default=None,
                   help="folder of xxxx_sat.jpg + xxxx_mask.png training pairs")
    g.add_argument("--val-dir", type=Path, default=None,
                   help="folder of validation pairs")
    g.add_argument("--loss", default=None, choices=["ce", "focal"], help="per-pixel loss (recipe)")
    g.add_argument("--focal-alpha", type=float, default=None, help="focal loss alpha")
    g.add_argument("--focal-gamma", type=float, default=None, help="focal loss gamma")
    g.add_argument("--aux-weight", type=float, default=None,
                   help="weight of the auxiliary head's loss, for models that have one (recipe)")
    g.add_argument("--aux-lr-scale", type=float, default=None,
                   help="learning rate of the auxiliary head, times --lr (deeplabv3) (recipe)")
    g.add_argument("--ignore-unknown", default=None, action=argparse.BooleanOptionalAction,
                   help="leave Unknown pixels out of the loss (recipe)")
    g.add_argument("--augment", default=None, choices=P2_AUGMENTS, help="augmentation preset (recipe)")
    g.add_argument("--scale-range", type=float_list, default=None, metavar="LO,HI",
                   help="scale each training tile and its mask by a factor drawn from [LO, HI] and take a random "
                        "window of the tile size (mirrored where a shrunk tile does not fill it); 1,1 for none "
                        "(recipe)")
    g.add_argument("--color-jitter", type=float, default=None,
                   help="strength of the random brightness, contrast and saturation change of each "
                        "training tile, 0 for none (recipe)")
    g.add_argument("--class-weights", default=None, choices=["none", "median-freq"],
                   help="weigh each class's pixels in the loss: median-freq is the median class frequency "
                        "over the class's own, counted once on the training masks (recipe)")
    g.add_argument("--backbone", default=None, choices=["resnet50", "resnet101"],
                   help="deeplabv3: its ResNet (torchvision's COCO weights for both) (recipe)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="keep the decoded tiles here as .npy and memory-map them on later runs (under "
                        "torchrun, each machine's first process writes them and its others map them, so "
                        "machines need not share the folder)")
    g.add_argument("--tile-size", type=int, default=None,
                   help="size every training and validation tile and mask must have (any size: every model "
                        "brings its output back to its input's)")
    g.add_argument("--dropout", type=float, default=None, help="fcn32s: dropout after fc6/fc7")
    g.add_argument("--bn-momentum", type=float, default=None,
                   help="lraspp: BatchNorm running-statistics momentum (default: torchvision's, 0.01 in the "
                        "backbone; 0.1 suits short runs and random weights)")
    show_defaults(parser, DEFAULTS["p2"])
    return parser


def main(args):
    setup = RunSetup.prepare(args, "p2")
    # Under torchrun each machine's first process decodes the tiles into --cache-dir and the machine's
    # others then map its files, rather than every process decoding and writing the same files at once.
    with distributed.main_first(setup.ctx, enabled=args.cache_dir is not None):
        train_set = load_pairs(args.train_dir, size=args.tile_size, cache_dir=args.cache_dir)
        val_set = load_pairs(args.val_dir, size=args.tile_size, cache_dir=args.cache_dir)
    if fits_on(setup.device, train_set.nbytes + val_set.nbytes):
        # 2,257 tiles are about 2.3 GB: on a large GPU they live there, as Problem 1's images do;
        # on an 11 GB card that would leave too little for DeepLabv3's activations.
        train_set, val_set = train_set.to(setup.device), val_set.to(setup.device)
    model, meta = setup.build_model(num_classes=NUM_CLASSES)
    train_tf, eval_tf = p2_transforms(args.augment, mean=meta["mean"], std=meta["std"], color_jitter=args.color_jitter,
                                      scale_range=args.scale_range)
    weights = None
    if args.class_weights == "median-freq":
        # Counted once from the training masks; the checkpoints record them.
        weights = meta["class_weights"] = class_weights(train_set.masks)
        if setup.ctx.is_main:
            print("class weights " + ", ".join(f"{name} {w:.3f}" for name, w in zip(CLASS_NAMES, weights)), flush=True)
    criterion = SegmentationLoss(args.loss, alpha=args.focal_alpha, gamma=args.focal_gamma,
                                 ignore_index=UNKNOWN if args.ignore_unknown else None, aux_weight=args.aux_weight,
                                 class_weights=weights).to(setup.device)
    task = Task(model=model, train_data=(train_set.images, train_set.masks),
                val_data=(val_set.images, val_set.masks), criterion=criterion, eval_criterion=criterion,
                train_transform=train_tf, eval_transform=eval_tf,
                make_metric=lambda: MeanIoU(NUM_CLASSES, SCORED_CLASSES), metric_name="miou", meta=meta,
                unit="tiles")
    return Trainer(setup, task).fit()


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
