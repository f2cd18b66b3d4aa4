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
Every flag is declared once, in config/flags.py; what the run folder holds is described once, in
utils/run_folder.py.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
from datasets.loader import fits_on
from datasets.p2 import CLASS_NAMES, NUM_CLASSES, SCORED_CLASSES, UNKNOWN, class_weights, load_pairs
from datasets.presets import p2_transforms
from training.losses import SegmentationLoss
from training.setup import RunSetup, TrainingParser
from training.trainer import Task, Trainer
from utils import distributed
from utils.errors import run_cli
from utils.metrics import MeanIoU


def get_args_parser():
    return TrainingParser(__doc__, "p2")


def main(args):
    setup = RunSetup.prepare(args, "p2")
    args = setup.args
    # Under torchrun each machine's first process decodes the tiles into --cache-dir and the machine's
    # others then map its files, rather than every process decoding and writing the same files at once.
    with distributed.main_first(setup.ctx, enabled=args.cache_dir is not None):
        train_set = load_pairs(args.train_dir, size=args.tile_size, cache_dir=args.cache_dir)
        val_set = load_pairs(args.val_dir, size=args.tile_size, cache_dir=args.cache_dir)
    weights = None
    if args.class_weights == "median-freq":
        # Counted once from the training masks; the checkpoints record them.
        weights = class_weights(train_set.masks)
        if setup.ctx.is_main:
            print("class weights " + ", ".join(f"{name} {w:.3f}" for name, w in zip(CLASS_NAMES, weights)), flush=True)
    if fits_on(setup.device, train_set.nbytes + val_set.nbytes):
        # 2,257 tiles are about 2.3 GB: on a large GPU they live there, as Problem 1's images do;
        # on an 11 GB card that would leave too little for DeepLabv3's activations.
        train_set, val_set = train_set.to(setup.device), val_set.to(setup.device)
    model, entries = setup.build_model(num_classes=NUM_CLASSES, class_weights=weights)
    train_tf, eval_tf = p2_transforms(args.augment, mean=entries["mean"], std=entries["std"],
                                      color_jitter=args.color_jitter, scale_range=args.scale_range)
    criterion = SegmentationLoss(args.loss, alpha=args.focal_alpha, gamma=args.focal_gamma,
                                 ignore_index=UNKNOWN if args.ignore_unknown else None, aux_weight=args.aux_weight,
                                 class_weights=weights).to(setup.device)
    task = Task(model=model, train_data=(train_set.images, train_set.masks),
                val_data=(val_set.images, val_set.masks), criterion=criterion, eval_criterion=criterion,
                train_transform=train_tf, eval_transform=eval_tf,
                make_metric=lambda: MeanIoU(NUM_CLASSES, SCORED_CLASSES), metric_name="miou", entries=entries,
                unit="tiles")
    return Trainer(setup, task).fit()


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
