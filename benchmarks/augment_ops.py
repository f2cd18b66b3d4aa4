"""Benchmark: BEiT's fine-tuning augmentation as batched ops, against timm's per-image PIL pipeline.

Usage:
    python3 benchmarks/augment_ops.py [--batch 32] [--repeats 5] [--device auto]

Times RandomResizedCrop(224) + horizontal flip + RandAugment rand-m9-mstd0.5-inc1 on a batch of
generated 32x32 images two ways:
  ours:            datasets.transforms' batched ops on a uint8 batch on the device (ToFloat,
                   RandomResizedCrop, RandomFlip, RandAugment), synchronised at the end;
  straightforward: each image a PIL image through torchvision.transforms.v2's RandomResizedCrop
                   (bicubic), RandomHorizontalFlip, timm's rand_augment_transform with BEiT's
                   hyper-parameters, and ToImage/ToDtype, one by one in this process and stacked,
                   as one worker of BEiT's DataLoader does.
Prints images/s for each (best of --repeats) and the ratio. Then, for each of the 15 RandAugment ops
forced on every sample at a fixed level and sign, and for RandomResizedCrop on a fixed upsampling and
downsampling box, the largest absolute difference (in 0..255 levels) against the
torchvision.transforms.v2.functional op on the same pixels: the comparison tests/test_augment_ops.py
asserts.
"""
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.transforms import Compose, RandAugment, RandomFlip, RandomResizedCrop, ToFloat  # noqa: E402
from utils.runtime import EpochRNG, resolve_device  # noqa: E402
from utils.args import check_positive, make_parser  # noqa: E402
from utils.errors import run_cli  # noqa: E402

FILL = (128, 128, 128)  # timm's img_mean for BEiT's mean 0.5: round(255 * 0.5)


def _timm_arg(name, level, sign):
    """timm's own level-to-argument map for op ``name``, its random negation pinned to ``sign``."""
    from timm.data import auto_augment

    level_fn = auto_augment.LEVEL_TO_ARG[name]
    if level_fn is None:
        return None
    saved = auto_augment.random.random
    auto_augment.random.random = lambda: 1.0 if sign < 0 else 0.0  # timm negates when random() > 0.5
    try:
        return level_fn(level, {"translate_pct": 0.45})[0]
    finally:
        auto_augment.random.random = saved


def torchvision_op(name, image, level, sign):
    """op ``name`` at ``level`` with ``sign`` on one uint8 image (3, H, W), by torchvision's functional op
    (SolarizeAdd, which torchvision lacks, by timm's lookup table written on tensors)."""
    from torchvision.transforms.v2 import InterpolationMode, functional as TF

    arg = _timm_arg(name, level, sign)
    h, w = image.shape[-2:]
    bilinear = dict(interpolation=InterpolationMode.BILINEAR, fill=list(FILL))
    if name == "AutoContrast":
        return TF.autocontrast(image)
    if name == "Equalize":
        return TF.equalize(image)
    if name == "Invert":
        return TF.invert(image)
    if name == "Rotate":
        return TF.rotate(image, arg, **bilinear)
    if name == "PosterizeIncreasing":
        return TF.posterize(image, arg)
    if name == "SolarizeIncreasing":
        return TF.solarize(image, arg)
    if name == "SolarizeAdd":
        return torch.where(image < 128, (image.int() + arg).clamp(max=255), image.int()).to(torch.uint8)
    if name == "ColorIncreasing":
        return TF.adjust_saturation(image, arg)
    if name == "ContrastIncreasing":
        return TF.adjust_contrast(image, arg)
    if name == "BrightnessIncreasing":
        return TF.adjust_brightness(image, arg)
    if name == "SharpnessIncreasing":
        return TF.adjust_sharpness(image, arg)
    shear = math.degrees(math.atan(arg))
    if name == "ShearX":
        return TF.affine(image, 0.0, [0.0, 0.0], 1.0, [shear, 0.0], center=[0, 0], **bilinear)
    if name == "ShearY":
        return TF.affine(image, 0.0, [0.0, 0.0], 1.0, [0.0, shear], center=[0, 0], **bilinear)
    if name == "TranslateXRel":
        return TF.affine(image, 0.0, [-arg * w, 0.0], 1.0, [0.0, 0.0], **bilinear)
    if name == "TranslateYRel":
        return TF.affine(image, 0.0, [0.0, -arg * h], 1.0, [0.0, 0.0], **bilinear)
    raise ValueError(f"unknown op {name!r}")


def randaugment_difference(name, images, level, sign):
    """Largest |ours - torchvision| (0..255 levels) and the share of pixels that differ, for op ``name``
    forced on every sample of the uint8 batch ``images`` at ``level`` and ``sign``."""
    b = images.shape[0]
    level_, sign_ = (torch.full((b,), float(v), dtype=torch.float64) for v in (level, sign))
    ours = RandAugment().apply_op(name, images.float(), level_, sign_)
    ref = torch.stack([torchvision_op(name, image, level, sign) for image in images]).float()
    diff = (ours - ref).abs()
    return diff.max().item(), (diff > 0).float().mean().item()


def resized_crop_difference(images, box, size):
    """Largest |ours - torchvision resized_crop(BICUBIC, antialias)| (0..255 levels) for one box
    ``(top, left, height, width)`` on every sample of the [0, 1] float batch ``images``."""
    from torchvision.transforms.v2 import InterpolationMode, functional as TF

    boxes = torch.tensor([box] * images.shape[0])
    ours = RandomResizedCrop(size).crop_resize(images, boxes)
    ref = torch.stack([TF.resized_crop(image, *box, [size, size], InterpolationMode.BICUBIC, antialias=True)
                       for image in images]).clamp(0, 1)
    return (ours - ref).abs().max().item() * 255.0


def generated_batch(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def time_ours(images, device, repeats):
    ops = Compose([ToFloat(), RandomResizedCrop(224), RandomFlip(), RandAugment()])
    x = images.to(device)
    times = []
    for epoch in range(repeats + 1):  # the first call warms up
        rng = EpochRNG(0, epoch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out, _ = ops(x, None, rng)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def time_straightforward(images, repeats):
    import torchvision.transforms.v2 as T
    from PIL import Image, ImageOps
    from timm.data.auto_augment import rand_augment_transform

    hparams = dict(translate_const=int(224 * 0.45), img_mean=FILL, interpolation=Image.BICUBIC)
    randaugment = rand_augment_transform("rand-m9-mstd0.5-inc1", hparams)
    for op in randaugment.ops:
        if op.name == "PosterizeIncreasing":
            # At a magnitude drawn >= 10 timm asks for 0 bits, which Pillow >= 10 refuses (older Pillow and
            # torchvision give black): keep the baseline running, with the black image.
            op.aug_fn = lambda img, bits, **_: ImageOps.posterize(img, bits) if bits else Image.new(img.mode, img.size)
    tf = T.Compose([T.RandomResizedCrop(224, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                    randaugment, T.ToImage(), T.ToDtype(torch.float32, scale=True)])
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.stack([tf(image) for image in pil])
        times.append(time.perf_counter() - start)
    return min(times)


def get_args_parser():
    parser = make_parser(__doc__, [])
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per way (best kept)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where our batch goes")
    return parser


def main(args):
    check_positive(args, 'batch', 'repeats')
    device = resolve_device(args.device)
    images = generated_batch(args.batch)
    ours = time_ours(images, device, args.repeats)
    base = time_straightforward(images, args.repeats)
    n = args.batch
    print(f"RandomResizedCrop(224) + flip + RandAugment rand-m9-mstd0.5-inc1 on {n} 32x32 images; "
          f"ours on {device}, torch threads {torch.get_num_threads()}")
    print(f"ours (batched ops):                               {n / ours:10,.0f} images/s")
    print(f"straightforward (PIL + timm, one by one, 1 proc): {n / base:10,.0f} images/s")
    print(f"ratio: {base / ours:.1f}x")
    print("largest |ours - torchvision.transforms.v2.functional| on the same pixels, in 0..255 levels "
          "(share of pixels that differ), level 7.3, both signs:")
    samples = generated_batch(8, seed=1)
    for name in RandAugment.OPS:
        worst = max(randaugment_difference(name, samples, 7.3, sign) for sign in (1, -1))
        print(f"  {name:22s}{worst[0]:6.1f}   ({worst[1]:.2%})")
    floats = samples.float() / 255.0
    for label, box, size in (("upsampling box", (3, 5, 20, 14), 224), ("downsampling box", (2, 1, 28, 30), 12)):
        print(f"  RandomResizedCrop, {label:16s} {resized_crop_difference(floats, box, size):.2e}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
