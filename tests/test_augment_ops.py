"""BEiT's augmentation ops (RandomResizedCrop, RandAugment, RandomErasing's pixel mode) against
torchvision's functional ops on the same pixels, their random draws, and seeded determinism."""
import importlib.util
import math

import pytest
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import InterpolationMode, functional as TF

from datasets.transforms import RandAugment, RandomErasing, RandomResizedCrop
from tests.conftest import REPO
from utils.runtime import EpochRNG

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bench():
    """benchmarks/augment_ops.py as a module: its per-op comparison is the one asserted here."""
    spec = importlib.util.spec_from_file_location("bench_augment_ops", REPO / "benchmarks" / "augment_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


# --- RandomResizedCrop ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("box, size", [((3, 5, 20, 14), 48), ((2, 1, 28, 30), 12), ((0, 0, 32, 32), 32)],
                         ids=["upsampling", "downsampling", "whole"])
def test_resized_crop_equals_torchvision_bicubic_antialias(box, size):
    x = images().float() / 255.0
    out = RandomResizedCrop(size).crop_resize(x, torch.tensor([box] * len(x)))
    ref = torch.stack([TF.resized_crop(image, *box, [size, size], InterpolationMode.BICUBIC, antialias=True)
                       for image in x]).clamp(0, 1)
    assert out.shape == (len(x), 3, size, size) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_resized_crop_boxes_as_torchvision_draws_them():
    op = RandomResizedCrop(16)
    boxes = op.draw_boxes(512, 32, 32, EpochRNG(0, 1, CPU), CPU)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    # Width and height are the rounded sqrt(area * ratio) and sqrt(area / ratio): within half a pixel.
    assert ((w + 0.5) * (h + 0.5) >= 0.08 * 32 * 32).all()
    assert ((w + 0.5) / (h - 0.5).clamp(min=0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    assert len(set(map(tuple, boxes.tolist()))) > 400  # each sample its own box
    x = images(4).float() / 255.0
    a, _ = op(x, None, EpochRNG(3, 2, CPU))
    b, _ = op(x, None, EpochRNG(3, 2, CPU))
    assert torch.equal(a, b) and not torch.equal(a, op(x, None, EpochRNG(3, 3, CPU))[0])
    assert a.min() >= 0 and a.max() <= 1


def test_resized_crop_falls_back_to_torchvision_central_crop():
    # On a 32x8 image no box of 90% to 100% of the area with ratio 3/4..4/3 fits: every sample takes the
    # central crop of ratio 3/4, as torchvision's get_params returns it.
    op = RandomResizedCrop(8, scale=(0.9, 1.0))
    boxes = op.draw_boxes(16, 32, 8, EpochRNG(0, 1, CPU), CPU)
    ref = T.RandomResizedCrop(8, scale=(0.9, 1.0)).make_params([torch.zeros(3, 32, 8)])
    assert ref == {"top": 10, "left": 0, "height": 11, "width": 8}
    assert boxes.tolist() == [[10, 0, 11, 8]] * 16


def test_resized_crop_refuses_uint8():
    with pytest.raises(TypeError, match="RandomResizedCrop takes float images"):
        RandomResizedCrop(8)(images(), None, EpochRNG(0, 1, CPU))


# --- RandAugment ---------------------------------------------------------------------------------------------

AFFINE = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


@pytest.mark.parametrize("name", RandAugment.OPS)
def test_rand_augment_op_equals_torchvision_on_the_same_uint8_pixels(bench, name):
    # Each op on every sample, at levels 3.1 and 9 (BEiT's), both signs where timm negates, against
    # torchvision's functional op with timm's own level-to-argument map. Exact, the affine ops included: they
    # build torchvision's grid and round as it does (float32 kernels summing in the same order on the CPU).
    x = images(3, seed=1)
    signed = bench._timm_arg(name, 9.0, 1) != bench._timm_arg(name, 9.0, -1)
    for level in (3.1, 9.0):
        for sign in (1, -1) if signed else (1,):
            worst, share = bench.randaugment_difference(name, x, level, sign)
            assert worst == 0.0, (name, level, sign, worst, share)


def test_rand_augment_call_keeps_shape_range_and_is_seeded():
    x = images(16).float() / 255.0
    op = RandAugment()
    a, y = op(x, "targets", EpochRNG(5, 1, CPU))
    b, _ = op(x, "targets", EpochRNG(5, 1, CPU))
    c, _ = op(x, "targets", EpochRNG(5, 2, CPU))
    assert a.shape == x.shape and a.dtype == x.dtype and y == "targets"
    assert a.min() >= 0 and a.max() <= 1 and torch.equal((a * 255).round() / 255, a)  # on the uint8 grid
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Samples take different ops: some are left as they are (both ops skipped, p = 1/4), others change.
    changed = [not torch.equal(a[i], x[i]) for i in range(len(x))]
    assert 0 < sum(changed) < len(x)
    with pytest.raises(TypeError, match="RandAugment takes float images"):
        op(images(), None, EpochRNG(0, 1, CPU))


def test_rand_augment_draws_per_sample_ops_and_applies_each_once(monkeypatch):
    calls = []
    apply_op = RandAugment.apply_op

    def spy(self, name, v, magnitude, sign):
        calls.append((name, len(v)))
        return apply_op(self, name, v, magnitude, sign)

    monkeypatch.setattr(RandAugment, "apply_op", spy)
    RandAugment(prob=1.0)(images(32).float() / 255.0, None, EpochRNG(0, 1, CPU))
    assert sum(n for _, n in calls) == 2 * 32  # two ops per sample, every one applied (prob 1)
    assert len(calls) <= 2 * len(RandAugment.OPS)  # at most one computation per (layer, op), not per sample
    assert len({name for name, _ in calls}) > 10  # samples drew many different ops


def test_rand_augment_matches_timm_level_maps_at_the_ends():
    # PosterizeIncreasing at level 10 keeps 0 bits (black), SolarizeIncreasing at 0 changes nothing (timm
    # thresholds at 256, where torchvision refuses the argument), SolarizeAdd at 10 adds 110 below 128.
    v = images(2).float()
    op = RandAugment()
    ten, zero, plus = (torch.full((2,), t, dtype=torch.float64) for t in (10.0, 0.0, 1.0))
    assert torch.equal(op.apply_op("PosterizeIncreasing", v, ten, plus), torch.zeros_like(v))
    assert torch.equal(op.apply_op("SolarizeIncreasing", v, zero, plus), v)
    assert torch.equal(op.apply_op("SolarizeAdd", v, ten, plus),
                       torch.where(v < 128, (v + 110).clamp(max=255), v))
    rotate = op._inverse_map("Rotate", ten / 10, 32, 32)  # 30 degrees at level 10
    assert rotate[0, 0, 0].item() == pytest.approx(math.cos(math.radians(30)))


# --- RandomErasing -------------------------------------------------------------------------------------------

def test_random_erasing_pixel_mode_fills_the_zero_mode_box_with_noise():
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 5.0  # no pixel is 0
    zero, _ = RandomErasing(p=0.5, mode="zero")(x, None, EpochRNG(0, 1, CPU))
    pixel, _ = RandomErasing(p=0.5, mode="pixel")(x, None, EpochRNG(0, 1, CPU))
    box = zero == 0
    assert box.any() and not box.all()
    assert torch.equal(pixel[~box], x[~box])  # the same box (the same draws), the rest untouched
    noise = pixel[box]
    assert (noise != 0).all() and (noise != x[box]).all()
    assert abs(noise.mean().item()) < 0.2 and abs(noise.std().item() - 1.0) < 0.2  # standard normal
    with pytest.raises(ValueError, match="RandomErasing mode 'const': one of zero, pixel"):
        RandomErasing(mode="const")


def test_random_erasing_zero_mode_is_unchanged():
    # The default is the zero mode, and it draws exactly what the op drew before it had modes: five (B,)
    # uniform draws from the device stream, nothing more.
    x = torch.randn(8, 3, 16, 16)
    rng, default_rng, replay = (EpochRNG(2, 1, CPU) for _ in range(3))
    out, _ = RandomErasing(p=0.5, mode="zero")(x, None, rng)
    ref, _ = RandomErasing(p=0.5)(x, None, default_rng)
    assert torch.equal(out, ref)
    for _ in range(5):  # area, ratio, top, left, whether to erase
        torch.rand(8, generator=replay.device)
    assert torch.equal(rng.device.get_state(), replay.device.get_state())
