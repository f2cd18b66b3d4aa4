"""Benchmark: training steps per second of a model, each speed option on and off.

Usage:
    python3 benchmarks/train_step.py --model vgg13 --batch-size 128
    python3 benchmarks/train_step.py --model vgg13 --batch-size 512
    python3 benchmarks/train_step.py --model beit --batch-size 32          # at 224, as trained
    python3 benchmarks/train_step.py --model deeplabv3 --batch-size 4      # 512x512 tiles
    python3 benchmarks/train_step.py --model vgg13 --amp-dtype fp16        # the course GPU's autocast

Times the training step training takes: ``training.engine.train_one_epoch`` over a fixed batch
already on the device (no data loading), as it comes out of the transforms (float32, contiguous
NCHW), with the recipe's optimiser driven by ``training.optim.Updater`` (a gradient scaler under
fp16) and random weights. First plainly (fp32, no compile, contiguous weights, the default
foreach optimiser), then with each speed option added alone and all together:
  amp             autocast in --amp-dtype (bf16 on CUDA where native, else fp16; bf16 on the CPU);
  channels_last   the weights in channels_last memory format (the default on CUDA); the loop
                  then gives each batch to the model in that format, as training does;
  fused           the fused optimiser kernels (the default on CUDA);
  compile         torch.compile (opt in: --compile).
Options that do not apply to the device print "n/a". On CUDA every setting, "plain" included,
runs with TF32 matrix multiplies allowed (as training does), so the amp ratio is against TF32.
Each line prints images/s and the ratio against the plain step, measured in this run, the
seconds the setting took (warm-up and compilation included) and, on CUDA, its peak memory;
--jsonl appends the same figures as one JSON line per setting.
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import get_model, list_models  # noqa: E402
from training.engine import train_one_epoch  # noqa: E402
from training.losses import SegmentationLoss  # noqa: E402
from training.optim import Updater, build_optimizer, build_scheduler  # noqa: E402
from utils.runtime import peak_memory_gib, reset_peak_memory, resolve_amp, resolve_device  # noqa: E402
from utils.args import check_non_negative, check_positive, make_parser  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.io import check_writable  # noqa: E402

# (input size, classes, optimiser) of each model's recipe.
SETUPS = {"vgg13": (32, 50, "adamw"), "beit": (224, 50, "sgd"), "fcn32s": (512, 7, "sgd"),
          "deeplabv3": (512, 7, "sgd"), "lraspp": (512, 7, "sgd")}
OPTIONS = ("amp", "channels_last", "fused", "compile")


def applies(option, device):
    # On the CPU bf16 autocast runs (slowly on most CPUs) and channels_last is supported by
    # oneDNN; fused optimiser kernels and the defaults are CUDA's.
    return option != "fused" or device.type == "cuda"


class Repeat:
    """The same ``(x, y)`` batch ``n`` times: a sized iterable of batches, as the engine takes."""

    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __iter__(self):
        return (self.batch for _ in range(self.n))


def time_steps(model_name, batch_size, device, options, steps, warmup, amp_dtype):
    """``(images/s, peak GiB or None)`` of ``steps`` training steps after ``warmup`` ones."""
    size, classes, opt = SETUPS[model_name]
    torch.manual_seed(0)
    model = get_model(model_name, num_classes=classes, pretrained=False).to(device)
    x = torch.randn(batch_size, 3, size, size, device=device)
    if classes == 7:
        y = torch.randint(0, classes, (batch_size, size, size), device=device)
        criterion = SegmentationLoss("ce", aux_weight=0.0)
    else:
        y = torch.randint(0, classes, (batch_size,), device=device)
        criterion = torch.nn.CrossEntropyLoss()
    if "channels_last" in options:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(opt, model.parameters(), lr=1e-4, weight_decay=0.0, momentum=0.9,
                                fused="fused" in options)
    amp_dtype = amp_dtype if "amp" in options else None
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    updater = Updater(optimizer, build_scheduler("constant", optimizer, total_steps=steps), scaler,
                      amp_dtype=amp_dtype, epochs=1, steps_per_epoch=steps)
    runner = torch.compile(model) if "compile" in options else model

    def run(n):
        return train_one_epoch(runner, criterion, updater, Repeat((x, y), n), transform=lambda x, y: (x, y),
                               device=device, progress=False)

    if warmup:
        run(warmup)
    reset_peak_memory(device)
    result = run(steps)  # ends by reading its sums: the device has finished
    return result["images_per_second"], peak_memory_gib(device)


def get_args_parser():
    parser = make_parser(__doc__, [])
    parser.add_argument("--model", default="vgg13", choices=list_models(), help="network to time")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, cuDNN autotune)")
    parser.add_argument("--options", nargs="*", default=list(OPTIONS), choices=OPTIONS,
                        help="speed options to try alone and together")
    parser.add_argument("--settings", nargs="*", default=None, choices=["plain", *OPTIONS, "all"],
                        help="time only these settings: plain, an option's name, all (default: every one)")
    parser.add_argument("--amp-dtype", default="auto", choices=["auto", "bf16", "fp16"],
                        help="the amp option's autocast dtype; auto as training's --amp auto on CUDA, bf16 on the CPU")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to compute")
    parser.add_argument("--jsonl", type=Path, default=None, help="append one JSON line per setting to this file")
    return parser


def main(args):
    check_positive(args, 'batch_size', 'steps')
    check_non_negative(args, 'warmup')
    if args.jsonl is not None:
        check_writable(args.jsonl, "--jsonl")
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    amp_dtype = resolve_amp(args.amp_dtype if device.type == "cuda" or args.amp_dtype != "auto" else "bf16", device)
    usable = [o for o in args.options if applies(o, device)]
    settings = [("plain", ())] + [(o, (o,)) for o in args.options]
    if len(usable) > 1:
        settings.append(("all: " + " + ".join(usable), tuple(usable)))
    if args.settings is not None:
        settings = [(name, options) for name, options in settings if name.split(":")[0] in args.settings]
    dtype = str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "none"
    print(f"{args.model} training step, batch {args.batch_size}, {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"amp {dtype}")
    base = None
    for name, options in settings:
        if not all(applies(o, device) for o in options):
            print(f"  {name:<40} n/a on {device.type}")
            continue
        start = time.perf_counter()
        rate, peak = time_steps(args.model, args.batch_size, device, options, args.steps, args.warmup, amp_dtype)
        seconds = time.perf_counter() - start
        base = base or rate
        memory = f"  peak {peak:.2f} GiB" if peak is not None else ""
        print(f"  {name:<40} {rate:10,.1f} img/s  {rate / base:5.2f}x  {seconds:6.1f}s{memory}", flush=True)
        if args.jsonl is not None:
            record = {"model": args.model, "batch_size": args.batch_size, "setting": name,
                      "amp": dtype if "amp" in options else "none", "images_per_second": rate,
                      "peak_memory_gib": peak, "seconds": seconds}
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
