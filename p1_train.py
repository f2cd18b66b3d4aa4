"""Train a Problem 1 classifier: VGG13-BN from scratch (method A) or BEiT fine-tuned (method B).

Usage:
    python3 p1_train.py --model vgg13                       # the reference recipe, 300 epochs
    python3 p1_train.py --model beit --pretrained-file W    # BEiT from local weights, 6 epochs
    python3 p1_train.py --resume runs/p1_vgg13/last.pth     # continue an interrupted run
    torchrun --nproc_per_node=4 p1_train.py --model vgg13   # 4 GPUs (--batch-size is global)

Flags marked 'recipe' default to the chosen model's reference recipe (../shared/RECIPES.md):
  vgg13: AdamW lr 1e-3, no weight decay, constant lr, batch 128, 300 epochs, crop+flip
  beit:  SGD lr 0.003 (no momentum), constant lr, batch 32, 6 epochs, mixup/cutmix + smoothing 0.1
The whole training set is decoded once and kept on the device; batches, augmentation and
normalisation are tensor operations there. A run folder gets args.json, metrics.jsonl,
best.pth, last.pth and epoch_NNN.pth snapshots (first, middle and last epoch by default).
"""
from pathlib import Path

from torch import nn

from datasets.loader import TensorBatches, count_batches
from datasets.p1 import MEAN, NUM_CLASSES, STD, load_folder
from datasets.presets import P1_AUGMENTS, p1_transforms
from models import get_model_spec, list_models
from utils.args import REPO, args_to_dict, make_parser, training_parser
from utils.errors import run_cli
from utils.metrics import Accuracy
from utils.run import build_model, build_optimization, finished_run, fit, prepare_run, resolve_run_args
from utils.runtime import seed_everything

RECIPES = {
    "vgg13": dict(epochs=300, batch_size=128, opt="adamw", lr=1e-3, momentum=0.0, weight_decay=0.0,
                  sched="constant", augment="crop-flip", pretrained=False),
    "beit": dict(epochs=6, batch_size=32, opt="sgd", lr=0.003, momentum=0.0, weight_decay=0.0,
                 sched="constant", augment="beit", pretrained=True),
}
DEFAULTS = dict(model="vgg13", train_dir=REPO / "hw1_data" / "p1_data" / "train_50",
                val_dir=REPO / "hw1_data" / "p1_data" / "val_50", global_pool="avg", dropout=0.5, seed=0,
                eval_batch_size=256)


def get_args_parser():
    parser = make_parser(__doc__, [training_parser()])
    g = parser.add_argument_group("problem 1")
    g.add_argument("--model", default=None, choices=list_models("p1"), help="network (default: vgg13)")
    g.add_argument("--train-dir", type=Path, default=None,
                   help="folder of {label}_{id}.png training images (default: hw1_data/p1_data/train_50)")
    g.add_argument("--val-dir", type=Path, default=None,
                   help="folder of {label}_{id}.png validation images (default: hw1_data/p1_data/val_50)")
    g.add_argument("--augment", default=None, choices=P1_AUGMENTS, help="augmentation preset (recipe)")
    g.add_argument("--global-pool", default=None, choices=["avg", "token"],
                   help="beit: pool the patch tokens (avg, as the reference ran) or take [CLS] "
                        "(default: avg)")
    g.add_argument("--dropout", type=float, default=None,
                   help="vgg13: dropout probability in the classifier (default: 0.5)")
    return parser


def main(args):
    ckpt = resolve_run_args(args, problem="p1", recipes=RECIPES, defaults=DEFAULTS)
    resumed = ckpt is not None
    device, amp_dtype, ctx, run = prepare_run(args, ckpt)
    train_set = load_folder(args.train_dir, labeled=True).to(device)
    val_set = load_folder(args.val_dir, labeled=True).to(device)

    seed_everything(args.seed)
    spec = get_model_spec(args.model)
    model, options = build_model(args, num_classes=NUM_CLASSES, device=device, resumed=resumed)
    mean, std = (spec.mean, spec.std) if spec.mean is not None else (MEAN, STD)
    train_tf, eval_tf = p1_transforms(args.augment, mean=mean, std=std, num_classes=NUM_CLASSES)

    def train_batches(rng):
        return TensorBatches(train_set.images, train_set.labels, args.batch_size,
                             generator=rng.cpu, drop_small=True,
                             rank=ctx.rank, world_size=ctx.world_size)

    steps = count_batches(len(train_set), args.batch_size, ctx.world_size, drop_small=True)
    optimizer, scheduler, scaler, start_epoch, best_metric, best_epoch = build_optimization(
        args, model, steps_per_epoch=steps, amp_dtype=amp_dtype, device=device, ckpt=ckpt)
    if start_epoch >= args.epochs:
        return finished_run(args, ckpt, "acc")

    if ctx.is_main:
        run.start(args_to_dict(args))
        print(f"training {args.model} on {len(train_set)} images ({args.train_dir}), validating on "
              f"{len(val_set)} ({args.val_dir}); {ctx.world_size} x {device.type}, amp {args.amp}; "
              f"output {args.output_dir}", flush=True)
    meta = {"problem": "p1", "arch": args.model, "model_kwargs": {"num_classes": NUM_CLASSES, **options},
            "num_classes": NUM_CLASSES, "mean": list(mean), "std": list(std), "args": args_to_dict(args)}
    return fit(
        model=model, criterion=nn.CrossEntropyLoss(), eval_criterion=nn.CrossEntropyLoss(),
        optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype, device=device,
        make_train_batches=train_batches, train_transform=train_tf,
        val_batches=TensorBatches(val_set.images, val_set.labels, args.eval_batch_size, rank=ctx.rank,
                                 world_size=ctx.world_size),
        eval_transform=eval_tf, make_metric=Accuracy, metric_name="acc", run=run,
        start_epoch=start_epoch, epochs=args.epochs, best_metric=best_metric, best_epoch=best_epoch,
        seed=args.seed, save_epochs=set(args.save_epochs), meta=meta,
        partial=ckpt.get("partial") if resumed else None, ctx=ctx, compile=args.compile, tta=args.tta,
        progress=args.progress)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
