"""Benchmark: training steps per second of a model, each speed option on and off.

Usage:
    python3 benchmarks/train_step.py --model vgg13 --batch-size 128
    python3 benchmarks/train_step.py --model vgg13 --batch-size 512
    python3 benchmarks/train_step.py --model beit --batch-size 32          # at 224, as trained
    python3 benchmarks/train_step.py --model deeplabv3 --batch-size 4      # 512x512 tiles

Times full training steps (forward, loss, backward, optimiser step; no data loading: a fixed
batch already on the device) of the recipe's optimiser, with random weights, first plainly
(fp32, no compile, contiguous NCHW, the default foreach optimiser) and then with each speed
option added alone and all together:
  amp             autocast bf16 (the default on CUDA);
  channels_last   model and input in channels_last memory format (the default on CUDA);
  fused           the fused optimiser kernels (the default on CUDA);
  compile         torch.compile (opt in: --compile).
Options that do not apply to the device print "n/a". On CUDA every setting, "plain" included,
runs with TF32 matrix multiplies allowed (as training does), so the amp ratio is against TF32. Each line prints images/s and the ratio
against the plain step, measured in this run; on CUDA also the peak memory of that setting.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import get_model, list_models  # noqa: E402
from utils.engine import autocast  # noqa: E402
from utils.losses import SegmentationLoss  # noqa: E402
from utils.optim import build_optimizer  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402

# (input size, classes, optimiser) of each model's recipe.
SETUPS = {"vgg13": (32, 50, "adamw"), "beit": (224, 50, "sgd"), "fcn32s": (512, 7, "sgd"),
          "deeplabv3": (512, 7, "sgd")}
OPTIONS = ("amp", "channels_last", "fused", "compile")


def applies(option, device):
    # On the CPU bf16 autocast runs (slowly on most CPUs) and channels_last is supported by
    # oneDNN; fused optimiser kernels and the defaults are CUDA's.
    return option != "fused" or device.type == "cuda"


def time_steps(model_name, batch_size, device, options, steps, warmup):
    size, classes, opt = SETUPS[model_name]
    torch.manual_seed(0)
    model = get_model(model_name, num_classes=classes, pretrained=False).to(device).train()
    x = torch.randn(batch_size, 3, size, size, device=device)
    if classes == 7:
        y = torch.randint(0, classes, (batch_size, size, size), device=device)
        criterion = SegmentationLoss("ce", aux_weight=0.0)
    else:
        y = torch.randint(0, classes, (batch_size,), device=device)
        criterion = torch.nn.CrossEntropyLoss()
    if "channels_last" in options:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = build_optimizer(opt, model.parameters(), lr=1e-4, weight_decay=0.0, momentum=0.9,
                                fused="fused" in options)
    runner = torch.compile(model) if "compile" in options else model
    amp_dtype = torch.bfloat16 if "amp" in options else None

    def step():
        with autocast(device, amp_dtype):
            loss = criterion(runner(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return batch_size * steps / seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg13", choices=list_models(), help="network to time")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, cuDNN autotune)")
    parser.add_argument("--options", nargs="*", default=list(OPTIONS), choices=OPTIONS,
                        help="speed options to try alone and together")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to compute")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    usable = [o for o in args.options if applies(o, device)]
    settings = [("plain", ())] + [(o, (o,)) for o in args.options]
    if len(usable) > 1:
        settings.append(("all: " + " + ".join(usable), tuple(usable)))
    print(f"{args.model} training step, batch {args.batch_size}, {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    base = None
    for name, options in settings:
        if not all(applies(o, device) for o in options):
            print(f"  {name:<40} n/a on {device.type}")
            continue
        rate, peak = time_steps(args.model, args.batch_size, device, options, args.steps, args.warmup)
        base = base or rate
        memory = f"  peak {peak:.2f} GiB" if peak is not None else ""
        print(f"  {name:<40} {rate:10,.1f} img/s  {rate / base:5.2f}x{memory}", flush=True)


if __name__ == "__main__":
    main()
