"""Benchmark: Problem 1 input path, ours against the straightforward per-sample pipeline.

Usage:
    python3 benchmarks/p1_input_path.py [--images 22500] [--epochs 2] [--device auto]

Writes N generated 32x32 PNGs in the course layout to a temporary folder, then times one
training epoch of input work (random crop 32 with padding 4, horizontal flip, normalisation,
batch 128) two ways:
  ours:            decode the folder once into one uint8 tensor on the device, then batched
                   tensor ops on index lookups (datasets.loader + datasets.presets);
  straightforward: a Dataset that opens each PNG with PIL and applies torchvision's per-sample
                   RandomCrop/RandomHorizontalFlip/ToTensor/Normalize, through a DataLoader.
Prints images/s for each and the ratio, measured in this run. The one-off decode is reported
separately and also folded into an amortised figure over --epochs epochs.
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.loader import TensorBatches  # noqa: E402
from datasets.p1 import MEAN, STD, load_folder  # noqa: E402
from datasets.presets import p1_transforms  # noqa: E402
from utils.runtime import EpochRNG, resolve_device  # noqa: E402
from utils.args import check_non_negative, check_positive, make_parser  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def write_images(folder, n):
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i % 50}_{i}.png")


def ours(folder, device, batch_size, epochs):
    start = time.perf_counter()
    data = load_folder(folder, labeled=True).to(device)
    decode = time.perf_counter() - start
    train_tf, _ = p1_transforms("crop-flip", mean=MEAN, std=STD, num_classes=50)
    times = []
    for epoch in range(1, epochs + 1):
        rng = EpochRNG(0, epoch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x, y in TensorBatches(data.images, data.labels, batch_size, generator=rng.cpu):
            x, y = train_tf(x, y, rng)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return len(data), decode, times


def straightforward(folder, device, batch_size, workers):
    import torchvision.transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    files = sorted(folder.glob("*.png"))

    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as im:
                return tf(im.convert("RGB")), int(files[i].name.split("_")[0])

    loader = torch.utils.data.DataLoader(Folder(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def get_args_parser():
    parser = make_parser(__doc__, [])
    parser.add_argument("--images", type=int, default=22500, help="generated images (the course's train_50 has 22,500)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed on our path (decode amortised over them)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (the VGG recipe's)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the straightforward path")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where batches go")
    return parser


def main(args):
    check_positive(args, 'images', 'epochs', 'batch_size')
    check_non_negative(args, 'workers')
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(folder, args.images)
        n, decode, times = ours(folder, device, args.batch_size, args.epochs)
        base = straightforward(folder, device, args.batch_size, args.workers)
    epoch = min(times)
    amortised = (decode + sum(times)) / len(times)
    print(f"device {device}, {n} images, batch {args.batch_size}")
    print(f"ours: decode once {decode:.2f}s ({n / decode:,.0f} img/s); epoch {epoch:.3f}s = {n / epoch:,.0f} img/s; "
          f"with the decode amortised over {len(times)} epochs {n / amortised:,.0f} img/s")
    print(f"straightforward (PIL + per-sample transforms + DataLoader, {args.workers} workers): "
          f"epoch {base:.2f}s = {n / base:,.0f} img/s")
    print(f"ratio per epoch: {base / epoch:.1f}x; amortised over {len(times)} epochs: {base / amortised:.1f}x")


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
