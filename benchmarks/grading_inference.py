"""Benchmark: grading inference end to end (hw1_1.sh, hw1_2.sh) and against the straightforward way.

Usage:
    python3 benchmarks/grading_inference.py [--images 2500] [--tiles 257] [--p2-model deeplabv3]

Writes N generated 32x32 PNGs and M generated 512x512 JPEG tiles (the validation sets' sizes by
default) and checkpoints of random weights (vgg13 and --p2-model, as training writes them), then:
  1. runs `bash hw1_1.sh` and `bash hw1_2.sh` on them as the grader does, timing the whole
     command (interpreter start, imports, checkpoint load, decoding, the model, writing);
  2. times the inference itself in this process, two ways:
       ours:            p1_inference.main / p2_inference.main (whole folder decoded by threads,
                        JPEGs decoded on the CPU by PIL as in training, batches on the device,
                        one argmax per batch, masks written by a thread-free palette encode);
       straightforward: a DataLoader over a per-image PIL + torchvision.transforms Dataset, the
                        model under no_grad, and for Problem 2 masks coloured one class at a time
                        with numpy and saved as RGB PNGs.
Ours runs as graded, with --amp auto (bf16 autocast where the device computes bfloat16 natively, fp16
on older GPUs, fp32 on other CPUs); the straightforward way in fp32, so there the ratio includes
mixed precision. Prints images/s (tiles/s) for each, the ratio, and whether both predict alike (the
same CSV; the share of mask pixels that agree).
"""
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.p1 import MEAN, NUM_CLASSES as P1_CLASSES, STD  # noqa: E402
from datasets.p2 import PALETTE, NUM_CLASSES as P2_CLASSES, read_mask  # noqa: E402
from datasets.synthetic import write_tiles  # noqa: E402
from models import load_trained, untrained_checkpoint  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402
import p1_inference  # noqa: E402
import p2_inference  # noqa: E402
from utils.args import check_non_negative, check_positive, make_parser  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_grading(script, inputs, out, env):
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / script), str(inputs), str(out)], env={**os.environ, **env},
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{script} failed: {proc.stderr.strip()}")
    return time.perf_counter() - start


def p1_straightforward(model, folder, device, batch_size, workers, out_csv):
    import torchvision.transforms as T

    tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    files = sorted(folder.glob("*.png"))

    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as im:
                return tf(im.convert("RGB"))

    labels = []
    with torch.no_grad():
        for x in torch.utils.data.DataLoader(Folder(), batch_size=batch_size, num_workers=workers):
            labels += model(x.to(device)).argmax(1).tolist()
    with open(out_csv, "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label"), *zip((p.name for p in files), labels)])
    return labels


def p2_straightforward(model, folder, device, batch_size, workers, out_dir, mean, std):
    import torchvision.transforms as T

    tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    files = sorted(folder.glob("*.jpg"))

    class Tiles(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as im:
                return tf(im.convert("RGB"))

    out_dir.mkdir(parents=True, exist_ok=True)
    i = 0
    with torch.no_grad():
        for x in torch.utils.data.DataLoader(Tiles(), batch_size=batch_size, num_workers=workers):
            for pred in model(x.to(device))["out"].argmax(1).cpu().numpy():
                rgb = np.zeros((*pred.shape, 3), dtype=np.uint8)
                for cls, colour in enumerate(PALETTE):
                    rgb[pred == cls] = colour
                Image.fromarray(rgb).save(out_dir / f"{files[i].stem}.png")
                i += 1


def get_args_parser():
    parser = make_parser(__doc__, [])
    parser.add_argument("--images", type=int, default=2500, help="Problem 1 images (the validation set has 2,500)")
    parser.add_argument("--tiles", type=int, default=257, help="Problem 2 tiles (the validation set has 257)")
    parser.add_argument("--p2-model", default="deeplabv3", choices=["deeplabv3", "fcn32s"], help="Problem 2 network")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the straightforward way")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to compute")
    return parser


def main(args):
    check_positive(args, 'images', 'tiles')
    check_non_negative(args, 'workers')
    device = resolve_device(args.device)
    print(f"device {device}; {args.images} Problem 1 images (vgg13), {args.tiles} Problem 2 tiles ({args.p2_model})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        p1_dir, p2_dir = tmp / "p1", tmp / "p2"
        p1_dir.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p1_dir / f"{i:04d}.png")
        write_tiles(p2_dir, args.tiles, size=512, seed=0)
        for mask in p2_dir.glob("*_mask.png"):
            mask.unlink()  # a test folder holds the tiles only
        p1_ckpt, p2_ckpt = tmp / "p1.pth", tmp / "p2.pth"
        save_checkpoint(untrained_checkpoint("vgg13", num_classes=P1_CLASSES, mean=MEAN, std=STD), p1_ckpt)
        save_checkpoint(untrained_checkpoint(args.p2_model, num_classes=P2_CLASSES, mean=MEAN, std=STD), p2_ckpt)
        env = {"HW1_P1_CHECKPOINT": str(p1_ckpt), "HW1_P2_CHECKPOINT": str(p2_ckpt), "PYTHON": sys.executable}

        seconds = run_grading("hw1_1.sh", p1_dir, tmp / "graded.csv", env)
        print(f"bash hw1_1.sh: {seconds:.1f}s for {args.images} images, end to end")
        seconds = run_grading("hw1_2.sh", p2_dir, tmp / "graded_masks", env)
        print(f"bash hw1_2.sh: {seconds:.1f}s for {args.tiles} tiles, end to end")

        common = ["--device", args.device, "--no-progress"]
        p1_args = p1_inference.get_args_parser().parse_args(["--checkpoint", str(p1_ckpt), *common,
                                                             str(p1_dir), str(tmp / "ours.csv")])
        _, ours = timed(lambda: p1_inference.main(p1_args))
        model, ckpt = load_trained(p1_ckpt, device)
        labels, base = timed(lambda: p1_straightforward(model, p1_dir, device, p1_args.batch_size, args.workers,
                                                        tmp / "base.csv"))
        same = (tmp / "ours.csv").read_text() == (tmp / "base.csv").read_text()
        print(f"Problem 1: ours {args.images / ours:,.0f} img/s ({ours:.2f}s); straightforward "
              f"{args.images / base:,.0f} img/s ({base:.2f}s); ratio {base / ours:.1f}x; same CSV: {same}")

        p2_args = p2_inference.get_args_parser().parse_args(["--checkpoint", str(p2_ckpt), *common,
                                                             str(p2_dir), str(tmp / "ours_masks")])
        _, ours = timed(lambda: p2_inference.main(p2_args))
        model, ckpt = load_trained(p2_ckpt, device, problem="p2")
        _, base = timed(lambda: p2_straightforward(model, p2_dir, device, p2_args.batch_size, args.workers,
                                                   tmp / "base_masks", ckpt["mean"], ckpt["std"]))
        agree = np.mean([np.mean(read_mask(p) == read_mask(tmp / "base_masks" / p.name))
                         for p in sorted((tmp / "ours_masks").glob("*.png"))])
        print(f"Problem 2: ours {args.tiles / ours:,.2f} tiles/s ({ours:.1f}s); straightforward "
              f"{args.tiles / base:,.2f} tiles/s ({base:.1f}s); ratio {base / ours:.2f}x; pixels that agree: "
              f"{agree:.4%} (random weights give near-tied logits, which rounding can flip)")


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
