"""Train a Problem 1 classifier: VGG13-BN from scratch (method A) or BEiT fine-tuned (method B).

Usage:
    python3 p1_train.py --model vgg13                       # the reference recipe, 300 epochs
    python3 p1_train.py --model beit --pretrained-file W    # BEiT from local weights, 6 epochs
    python3 p1_train.py --resume runs/p1_vgg13/last.pth     # continue an interrupted run
    torchrun --nproc_per_node=4 p1_train.py --model vgg13   # 4 GPUs (--batch-size is global)

The whole training set is decoded once and kept on the device; batches, augmentation and
normalisation are tensor operations there. What the run folder holds is described once, in
training/run.py.
"""
import argparse
from pathlib import Path

from torch import nn

from datasets.p1 import MEAN, NUM_CLASSES, STD, load_folder
from datasets.presets import P1_AUGMENTS, p1_transforms
from models import list_models
from training.recipes import DEFAULTS, RECIPE_NAMES, describe
from training.setup import RunSetup
from training.trainer import Task, Trainer
from utils.args import make_parser, show_defaults, training_parser
from utils.errors import run_cli
from utils.metrics import Accuracy


def get_args_parser():
    parser = make_parser(__doc__, [training_parser(RECIPE_NAMES)], epilog=describe("p1"))
    g = parser.add_argument_group("problem 1")
    g.add_argument("--model", default=None, choices=list_models("p1"),
                   help="network: vgg13 (VGG13-BN from scratch, method A) or beit (BEiT-base, ImageNet-22k "
                        "weights fine-tuned with a linear head, method B)")
    g.add_argument("--train-dir", type=Path, default=None,
                   help="folder of {label}_{id}.png training images")
    g.add_argument("--val-dir", type=Path, default=None,
                   help="folder of {label}_{id}.png validation images")
    g.add_argument("--augment", default=None, choices=P1_AUGMENTS, help="augmentation preset (recipe)")
    g.add_argument("--label-smoothing", type=float, default=None,
                   help="label smoothing of the cross-entropy, applied once, to mixup/cutmix targets too (recipe)")
    g.add_argument("--random-erasing", type=float, default=None,
                   help="probability of erasing a random rectangle of each training image (recipe)")
    g.add_argument("--trivial-augment", default=None, action=argparse.BooleanOptionalAction,
                   help="crop-flip: TrivialAugmentWide on each training image after the crop and flip (recipe)")
    g.add_argument("--cutmix", type=float, default=None, metavar="P",
                   help="crop-flip: probability that a training batch is mixed by CutMix (alpha 1), 0 for never "
                        "(recipe)")
    g.add_argument("--layer-decay", type=float, default=None,
                   help="beit: layer-wise lr decay, each block's lr this factor times the next one's (recipe)")
    g.add_argument("--drop-path", type=float, default=None, help="beit: stochastic depth rate (recipe)")
    g.add_argument("--global-pool", default=None, choices=["avg", "token"],
                   help="beit: pool the patch tokens (avg, as the reference ran) or take [CLS]")
    g.add_argument("--dropout", type=float, default=None,
                   help="vgg13: dropout probability in the classifier")
    show_defaults(parser, DEFAULTS["p1"])
    return parser


def main(args):
    setup = RunSetup.prepare(args, "p1")
    train_set = load_folder(args.train_dir, labeled=True).to(setup.device)
    val_set = load_folder(args.val_dir, labeled=True).to(setup.device)
    model, meta = setup.build_model(num_classes=NUM_CLASSES, mean=MEAN, std=STD)
    train_tf, eval_tf = p1_transforms(args.augment, mean=meta["mean"], std=meta["std"], num_classes=NUM_CLASSES,
                                      random_erasing=args.random_erasing, trivial_augment=args.trivial_augment,
                                      cutmix=args.cutmix)
    task = Task(model=model, train_data=(train_set.images, train_set.labels),
                val_data=(val_set.images, val_set.labels),
                criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
                eval_criterion=nn.CrossEntropyLoss(), train_transform=train_tf, eval_transform=eval_tf,
                make_metric=Accuracy, metric_name="acc", meta=meta)
    return Trainer(setup, task).fit()


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
