"""Benchmark: Problem 2 input path, ours against per-sample PIL decoding and colour conversion.

Usage:
    python3 benchmarks/p2_input_path.py [--tiles 400] [--epochs 2] [--device auto]

Writes N generated 512x512 tile/mask pairs in the course layout to a temporary folder (the
training set has 2,000), then times the input work of DeepLabv3's recipe (batch 4, horizontal and
vertical flips of image and mask, normalisation) two ways:
  ours:            decode the folder once (PIL JPEG decoding and one lookup table for
                   the mask colours, on a thread pool: datasets.p2.load_pairs), then batches by
                   index lookups, copied to the device and flipped there (datasets.loader +
                   datasets.presets);
  straightforward: a Dataset that opens each tile and mask with PIL every epoch, converts the
                   mask's colours with the course's threshold and one comparison per class, flips
                   per sample with numpy and normalises, through a DataLoader.
Prints tiles/s for each and the ratio, measured in this run, per epoch and with our one-off
decode amortised over --epochs epochs.
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
from datasets.p2 import load_pairs  # noqa: E402
from datasets.presets import p2_transforms  # noqa: E402
from datasets.synthetic import write_tiles  # noqa: E402
from models import get_model_spec  # noqa: E402
from utils.runtime import EpochRNG, resolve_device  # noqa: E402
from utils.args import check_non_negative, check_positive, make_parser  # noqa: E402
from utils.errors import run_cli  # noqa: E402

SPEC = get_model_spec("deeplabv3")
MEAN, STD = SPEC.mean, SPEC.std
CODES = {3: 0, 6: 1, 5: 2, 2: 3, 1: 4, 7: 5, 0: 6, 4: 6}  # the course's 4R + 2G + B codes


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(folder, device, batch_size, epochs):
    start = time.perf_counter()
    data = load_pairs(folder)
    decode = time.perf_counter() - start
    train_tf, _ = p2_transforms("flip", mean=MEAN, std=STD)
    times = []
    for epoch in range(1, epochs + 1):
        rng = EpochRNG(0, epoch, device)
        sync(device)
        start = time.perf_counter()
        for x, y in TensorBatches(data.images, data.masks, batch_size, generator=rng.cpu, device=device):
            x, y = train_tf(x, y, rng)
        sync(device)
        times.append(time.perf_counter() - start)
    return len(data), decode, times


class CourseTiles(torch.utils.data.Dataset):
    """The straightforward way: PIL per sample, per-class colour comparisons, numpy flips."""

    def __init__(self, folder):
        self.tiles = sorted(Path(folder).glob("*_sat.jpg"))
        self.mean = np.array(MEAN, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.array(STD, dtype=np.float32).reshape(3, 1, 1)

    def __len__(self):
        return len(self.tiles)

    def __getitem__(self, i):
        tile = self.tiles[i]
        image = np.asarray(Image.open(tile).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
        rgb = (np.asarray(Image.open(tile.with_name(tile.name.replace("_sat.jpg", "_mask.png"))).convert("RGB"))
               >= 128).astype(int)
        code = 4 * rgb[..., 0] + 2 * rgb[..., 1] + rgb[..., 2]
        mask = np.zeros(code.shape, dtype=np.int64)
        for c, cls in CODES.items():
            mask[code == c] = cls
        if np.random.rand() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        if np.random.rand() < 0.5:
            image, mask = image[:, ::-1], mask[::-1]
        image = (image - self.mean) / self.std
        return torch.from_numpy(image.copy()), torch.from_numpy(mask.copy())


def straightforward(folder, device, batch_size, workers):
    loader = torch.utils.data.DataLoader(CourseTiles(folder), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    sync(device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    sync(device)
    return time.perf_counter() - start


def get_args_parser():
    parser = make_parser(__doc__, [])
    parser.add_argument("--tiles", type=int, default=400, help="generated 512x512 pairs (the course has 2,000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed on our path (decode amortised over them)")
    parser.add_argument("--batch-size", type=int, default=4, help="batch size (DeepLabv3's recipe)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the straightforward path")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where batches go")
    return parser


def main(args):
    check_positive(args, 'tiles', 'epochs', 'batch_size')
    check_non_negative(args, 'workers')
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiles(Path(tmp), args.tiles, size=512, seed=0)
        n, decode, times = ours(folder, device, args.batch_size, args.epochs)
        base = straightforward(folder, device, args.batch_size, args.workers)
    epoch = min(times)
    amortised = (decode + sum(times)) / len(times)
    print(f"device {device}, {n} tiles of 512x512, batch {args.batch_size}")
    print(f"ours: decode once {decode:.2f}s ({n / decode:,.0f} tiles/s); epoch {epoch:.3f}s = {n / epoch:,.0f} tiles/s; "
          f"with the decode amortised over {len(times)} epochs {n / amortised:,.0f} tiles/s")
    print(f"straightforward (PIL + per-class colour conversion + DataLoader, {args.workers} workers): "
          f"epoch {base:.2f}s = {n / base:,.0f} tiles/s")
    print(f"ratio per epoch: {base / epoch:.1f}x; amortised over {len(times)} epochs: {base / amortised:.1f}x")


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
