"""Train a Problem 1 classifier: VGG13-BN from scratch (method A) or BEiT fine-tuned (method B).

Usage:
    python3 p1_train.py --model vgg13                       # the reference recipe, 300 epochs
    python3 p1_train.py --model beit --pretrained-file W    # BEiT from local weights, 6 epochs
    python3 p1_train.py --resume runs/p1_vgg13/last.pth     # continue an interrupted run
    python3 p1_train.py --config runs/p1_vgg13/args.json --output-dir runs/again   # rerun a run exactly
    torchrun --nproc_per_node=4 p1_train.py --model vgg13   # 4 GPUs (--batch-size is global)

The whole training set is decoded once and kept on the device; batches, augmentation and
normalisation are tensor operations there. Every flag is declared once, in config/flags.py; what
the run folder holds is described once, in utils/run_folder.py.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
from torch import nn

from datasets.p1 import MEAN, NUM_CLASSES, STD, load_folder
from datasets.presets import p1_transforms
from training.setup import RunSetup, TrainingParser
from training.trainer import Task, Trainer
from utils.errors import run_cli
from utils.metrics import Accuracy


def get_args_parser():
    return TrainingParser(__doc__, "p1")


def main(args):
    setup = RunSetup.prepare(args, "p1")
    args = setup.args
    train_set = load_folder(args.train_dir, labeled=True).to(setup.device)
    val_set = load_folder(args.val_dir, labeled=True).to(setup.device)
    model, entries = setup.build_model(num_classes=NUM_CLASSES, mean=MEAN, std=STD)
    train_tf, eval_tf = p1_transforms(args.augment, mean=entries["mean"], std=entries["std"], num_classes=NUM_CLASSES,
                                      random_erasing=args.random_erasing, erasing_mode=args.erasing_mode,
                                      cutmix=args.cutmix, resized_crop=args.resized_crop,
                                      rand_augment=args.rand_augment)
    task = Task(model=model, train_data=(train_set.images, train_set.labels),
                val_data=(val_set.images, val_set.labels),
                criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
                eval_criterion=nn.CrossEntropyLoss(), train_transform=train_tf, eval_transform=eval_tf,
                make_metric=Accuracy, metric_name="acc", entries=entries)
    return Trainer(setup, task).fit()


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
