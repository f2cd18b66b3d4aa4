"""Batched augmentation: shapes, exact semantics, and seeded determinism."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF1
import torchvision.transforms.v2.functional as TF2
from torch import nn
from torchvision.transforms import TrivialAugmentWide as TorchvisionTrivialAugmentWide

from datasets.loader import TensorBatches
from datasets.presets import p1_transforms
from datasets.transforms import (Compose, MixupCutmix, Normalize, RandomCrop, RandomFlip, TrivialAugmentWide,
                                 smooth_one_hot)
from utils.runtime import EpochRNG

CPU = torch.device("cpu")


def batch(n=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 5


def test_random_crop_is_a_window_of_the_padded_image():
    x, y = batch()
    out, y2 = RandomCrop(32, padding=4)(x, y, EpochRNG(0, 1, CPU))
    assert out.shape == x.shape and out.dtype == torch.uint8 and torch.equal(y, y2)
    padded = F.pad(x, (4, 4, 4, 4))
    offsets = set()
    for b in range(len(x)):
        hits = [(t, l) for t in range(9) for l in range(9)
                if torch.equal(out[b], padded[b, :, t:t + 32, l:l + 32])]
        assert hits, f"sample {b} is not a crop of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 1  # positions differ between samples


def test_random_flip_flips_some_samples_and_masks_follow():
    x, _ = batch()
    masks = torch.randint(0, 7, (16, 32, 32))
    out, out_masks = RandomFlip(dim=-1)(x, masks, EpochRNG(0, 1, CPU))
    flipped = [torch.equal(out[b], x[b].flip(-1)) for b in range(16)]
    for b in range(16):
        assert flipped[b] or torch.equal(out[b], x[b])
        assert torch.equal(out_masks[b], masks[b].flip(-1) if flipped[b] else masks[b])
    assert 0 < sum(flipped) < 16


def test_vertical_flip():
    x, _ = batch()
    out, _ = RandomFlip(p=1.0, dim=-2)(x, None, EpochRNG(0, 1, CPU))
    assert torch.equal(out, x.flip(-2))


def test_normalize_exact():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1)
    out, _ = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))(x, None)
    assert torch.allclose(out[0].flatten(), torch.tensor([-1.0, -1.0, 0.0]))
    assert torch.allclose(out[1].flatten(), torch.tensor([1.0, 3.0, 0.5]))
    # float input in [0, 1] means the same thing.
    out_f, _ = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))(x.float() / 255, None)
    assert torch.allclose(out, out_f)


def test_smooth_one_hot_values():
    t = smooth_one_hot(torch.tensor([2, 0]), 4, 0.1)
    assert torch.allclose(t[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(t.sum(1), torch.ones(2))


@pytest.mark.parametrize("switch_prob", [0.0, 1.0])  # mixup only, cutmix only
def test_mixup_cutmix_targets(switch_prob):
    x, y = batch(8)
    x = x.float()
    op = MixupCutmix(num_classes=5, switch_prob=switch_prob)
    for epoch in range(5):
        out, target = op(x, y, EpochRNG(0, epoch, CPU))
        assert out.shape == x.shape and target.shape == (8, 5)
        assert torch.allclose(target.sum(1), torch.ones(8))
        # Each row mixes the sample's own class and its partner's (the reversed batch).
        own = target[torch.arange(8), y]
        partner = target[torch.arange(8), y.flip(0)]
        assert torch.all(own + partner >= 0.9 - 1e-6) or torch.equal(y, y.flip(0))
        if switch_prob == 1.0:  # cutmix pastes pixels: each one is its own or its partner's
            assert torch.all((out == x) | (out == x.flip(0)))


def test_mixup_cutmix_prob_zero_keeps_images_and_gives_smoothed_one_hot_rows():
    x, y = batch(8)
    x = x.float()
    out, target = MixupCutmix(num_classes=5, smoothing=0.1, prob=0.0)(x, y, EpochRNG(0, 1, CPU))
    assert torch.equal(out, x)
    assert torch.equal(target, smooth_one_hot(y, 5, 0.1))


@pytest.mark.parametrize("switch_prob", [0.0, 1.0])
def test_mixup_cutmix_prob_one_makes_the_draws_it_always_made(switch_prob):
    x, y = batch(8)
    x = x.float()
    rng, default_rng, replay = (EpochRNG(4, 2, CPU) for _ in range(3))
    out, target = MixupCutmix(num_classes=5, switch_prob=switch_prob, prob=1.0)(x, y, rng)
    ref_out, ref_target = MixupCutmix(num_classes=5, switch_prob=switch_prob)(x, y, default_rng)
    assert torch.equal(out, ref_out) and torch.equal(target, ref_target)
    # The draws before prob existed: the switch, the ratio, and for cutmix the box centre; no more.
    if replay.np.random() < switch_prob:
        replay.np.beta(1.0, 1.0)
        replay.np.integers(0, 32), replay.np.integers(0, 32)
    else:
        replay.np.beta(0.1, 0.1)
    assert rng.np.bit_generator.state == replay.np.bit_generator.state
    assert not torch.equal(out, x)


@pytest.mark.parametrize("prob", [-0.1, 1.5])
def test_mixup_cutmix_prob_outside_zero_one_is_refused(prob):
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        MixupCutmix(num_classes=5, prob=prob)


def test_mixup_cutmix_prob_half_mixes_some_batches_only():
    x, y = batch(8)
    x = x.float()
    op = MixupCutmix(num_classes=5, switch_prob=1.0, prob=0.5, smoothing=0.0)
    mixed = [not torch.equal(op(x, y, EpochRNG(0, epoch, CPU))[0], x) for epoch in range(20)]
    assert 0 < sum(mixed) < 20


def test_mixup_of_identical_images_changes_nothing():
    x = torch.rand(1, 3, 8, 8).expand(6, 3, 8, 8).contiguous()
    out, _ = MixupCutmix(num_classes=5)(x, torch.zeros(6, dtype=torch.long), EpochRNG(3, 1, CPU))
    assert torch.allclose(out, x)


@pytest.mark.parametrize("augment", ["crop-flip", "beit"])
def test_presets_are_seeded(augment):
    x, y = batch(4)
    train, _ = p1_transforms(augment, mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=5)
    a = train(x, y, EpochRNG(7, 2, CPU))
    b = train(x, y, EpochRNG(7, 2, CPU))
    c = train(x, y, EpochRNG(7, 3, CPU))
    size = 32 if augment == "crop-flip" else 224
    assert a[0].shape == (4, 3, size, size) and a[0].dtype == torch.float32
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_p1_defaults_keep_the_crop_flip_preset():
    train, _ = p1_transforms("crop-flip", mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=5)
    assert repr(train) == ("Compose(RandomCrop(32, padding=4), RandomFlip(p=0.5, dim=-1), "
                           "Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))")


def test_p1_trivial_augment_and_cutmix_give_soft_targets():
    x, y = batch(8)
    train, _ = p1_transforms("crop-flip", mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=5,
                             trivial_augment=True, cutmix=0.5)
    names = [type(op).__name__ for op in train.ops]
    assert names == ["RandomCrop", "RandomFlip", "TrivialAugmentWide", "Normalize", "MixupCutmix"]
    for epoch in range(4):  # mixed batches and unmixed ones alike
        out, target = train(x, y, EpochRNG(0, epoch, CPU))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert target.shape == (8, 5) and torch.allclose(target.sum(1), torch.ones(8))


@pytest.mark.parametrize("option", [dict(trivial_augment=True), dict(cutmix=0.5)])
@pytest.mark.parametrize("augment", ["beit", "beit-224", "none"])
def test_p1_trivial_augment_and_cutmix_only_with_crop_flip(augment, option):
    with pytest.raises(ValueError, match="crop-flip"):
        p1_transforms(augment, mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=5, **option)


@pytest.mark.parametrize("augment", ["beit", "beit-224"])
def test_beit_mixup_leaves_label_smoothing_to_the_loss_which_applies_it_once(augment):
    # These presets smoothed their mixed targets by 0.1 and the loss smoothed them again by
    # --label-smoothing. Now their targets are mixtures of one-hot rows, and the loss's smoothing of
    # them equals timm's (BEiT's) smoothing before mixing, the same draws otherwise.
    x, y = batch(8)
    train, _ = p1_transforms(augment, mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=5)
    mixer = train.ops[-1]
    assert isinstance(mixer, MixupCutmix) and mixer.smoothing == 0.0
    smoothed_first = Compose([*train.ops[:-1], MixupCutmix(5, mixup_alpha=mixer.mixup_alpha, cutmix_alpha=1.0,
                                                           switch_prob=0.5, smoothing=0.1)])
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    for epoch in range(4):
        out, target = train(x, y, EpochRNG(0, epoch, CPU))
        ref_out, ref_target = smoothed_first(x, y, EpochRNG(0, epoch, CPU))
        assert torch.equal(out, ref_out)
        assert ((target > 0).sum(1) <= 2).all()  # its own class and its partner's, nothing smoothed
        assert torch.allclose(target * 0.9 + 0.1 / 5, ref_target)
        loss = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, target)  # as p1_train builds it
        assert loss.item() == pytest.approx(nn.CrossEntropyLoss()(logits, ref_target).item(), rel=1e-6)


def _ta_apply(ta, x, name, magnitude_bin=0, negative=False):
    """``ta``'s op ``name`` at one bin and sign for every sample of ``x``."""
    b = x.shape[0]
    return ta.apply(x, torch.full((b,), ta.OPS.index(name)), torch.full((b,), magnitude_bin),
                    torch.full((b,), negative))


def _ta_magnitude(name, magnitude_bin, negative):
    """The signed magnitude torchvision's TrivialAugmentWide gives op ``name`` at that bin and sign."""
    values, signed = TrivialAugmentWide().space()[name]
    m = float(values[magnitude_bin]) if values.dim() else 0.0
    return -m if signed and negative else m


def test_trivial_augment_keeps_dtype_shape_and_labels():
    x, y = batch(32)
    ta = TrivialAugmentWide()
    out, y2 = ta(x, y, EpochRNG(0, 1, CPU))
    assert out.shape == x.shape and out.dtype == torch.uint8 and torch.equal(y2, y)
    changed = [not torch.equal(out[i], x[i]) for i in range(32)]
    assert 0 < sum(changed) < 32  # Identity (and a few bins of other ops) leave a sample as it is
    assert repr(ta) == "TrivialAugmentWide(num_magnitude_bins=31)"
    with pytest.raises(TypeError, match="uint8"):
        ta(x.float(), y, EpochRNG(0, 1, CPU))
    with pytest.raises(ValueError, match="masks"):
        ta(x, torch.zeros(32, 32, 32, dtype=torch.long), EpochRNG(0, 1, CPU))


def test_trivial_augment_is_seeded():
    x, y = batch(32)
    ta = TrivialAugmentWide()
    a, _ = ta(x, y, EpochRNG(5, 1, CPU))
    b, _ = ta(x, y, EpochRNG(5, 1, CPU))
    c, _ = ta(x, y, EpochRNG(5, 2, CPU))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_trivial_augment_draws_every_op_bin_and_sign():
    op, magnitude_bin, negative = TrivialAugmentWide().draw(4096, EpochRNG(0, 1, CPU), CPU)
    # 4096 draws miss one of 14 ops with probability about 14 * (13/14)**4096: never.
    assert set(op.tolist()) == set(range(14))
    assert set(magnitude_bin.tolist()) == set(range(31))
    assert set(negative.tolist()) == {False, True}


def test_trivial_augment_op_space_is_torchvisions():
    # Torchvision's table is a private method; this pins the ops, bins, ranges and signs to it.
    theirs = TorchvisionTrivialAugmentWide()._augmentation_space(31)
    ours = TrivialAugmentWide().space()
    assert list(ours) == list(theirs) == list(TrivialAugmentWide.OPS)
    for name, (values, signed) in theirs.items():
        assert torch.equal(ours[name][0], values) and ours[name][1] == signed, name


def test_trivial_augment_identity_and_zero_magnitudes_leave_samples_unchanged():
    x, _ = batch(8)
    ta = TrivialAugmentWide()
    for name in ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Posterize"):
        for negative in (False, True):  # bin 0: magnitude 0, factor 1, or 8 bits
            assert torch.equal(_ta_apply(ta, x, name, 0, negative), x), name


def _torchvision_op(image, name, m):
    """Torchvision's TrivialAugmentWide op ``name`` at signed magnitude ``m``, as its public functional calls."""
    if name in ("ShearX", "ShearY"):
        shear = [math.degrees(math.atan(m)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(m))]
        return TF2.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0])
    if name in ("TranslateX", "TranslateY"):
        translate = [int(m), 0] if name == "TranslateX" else [0, int(m)]
        return TF2.affine(image, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0])
    if name == "Rotate":
        return TF2.rotate(image, m)
    # The colour ops as torchvision.transforms.TrivialAugmentWide calls them (the v1 kernels).
    return {"Brightness": lambda: TF1.adjust_brightness(image, 1.0 + m),
            "Color": lambda: TF1.adjust_saturation(image, 1.0 + m),
            "Contrast": lambda: TF1.adjust_contrast(image, 1.0 + m),
            "Sharpness": lambda: TF1.adjust_sharpness(image, 1.0 + m),
            "Posterize": lambda: TF1.posterize(image, int(m)),
            "Solarize": lambda: TF1.solarize(image, m),
            "AutoContrast": lambda: TF2.autocontrast(image),
            "Equalize": lambda: TF1.equalize(image)}[name]()


@pytest.mark.parametrize("name", TrivialAugmentWide.GEOMETRIC)
def test_trivial_augment_geometry_matches_torchvision(name):
    x, _ = batch(4)
    ta = TrivialAugmentWide()
    for magnitude_bin in (7, 20, 30):  # Rotate bin 20 is 90 degrees, which torchvision does with rot90
        for negative in (False, True):
            ours = _ta_apply(ta, x, name, magnitude_bin, negative)
            m = _ta_magnitude(name, magnitude_bin, negative)
            theirs = torch.stack([_torchvision_op(image, name, m) for image in x])
            # Same float32 matrices and grid, so bit-identical here (every bin and sign, 64 random images);
            # 1% slack for a BLAS that rounds torchvision's grid matmul differently, which can move a
            # nearest-neighbour pick only where a sampling point falls within rounding of a pixel edge.
            agree = (ours == theirs).all(1).float().mean().item()
            assert agree >= 0.99, (name, magnitude_bin, negative, agree)


@pytest.mark.parametrize("name", ["Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                                  "AutoContrast", "Equalize"])
def test_trivial_augment_colour_ops_match_torchvision(name):
    x, _ = batch(4)
    ta = TrivialAugmentWide()
    for magnitude_bin in (9, 30):
        for negative in (False, True):
            ours = _ta_apply(ta, x, name, magnitude_bin, negative)
            m = _ta_magnitude(name, magnitude_bin, negative)
            theirs = torch.stack([_torchvision_op(image, name, m) for image in x])
            # Bit-identical here; a blend truncated to uint8 may land one level apart on another CPU.
            assert (ours.int() - theirs.int()).abs().max() <= 1, (name, magnitude_bin, negative)
            assert (ours == theirs).float().mean() >= 0.99, (name, magnitude_bin, negative)


def test_trivial_augment_posterize_and_solarize_exact():
    values = [0, 1, 127, 128, 200, 238, 246, 247, 255]
    x = torch.tensor(values, dtype=torch.uint8).view(1, 1, 1, 9).expand(1, 3, 1, 9)
    ta = TrivialAugmentWide()

    def pixels(name, magnitude_bin):
        return _ta_apply(ta, x, name, magnitude_bin)[0, 0, 0].tolist()

    # Bits 8 - round(bin / 5): bin 15 keeps 5 bits (mask 0b11111000), bin 30 keeps 2 (0b11000000).
    assert pixels("Posterize", 15) == [0, 0, 120, 128, 200, 232, 240, 240, 248]
    assert pixels("Posterize", 30) == [0, 0, 64, 128, 192, 192, 192, 192, 192]
    # Threshold 255 - 8.5 * bin, pixels at or above it inverted: 255, 246.5, 0.
    assert pixels("Solarize", 0) == [0, 1, 127, 128, 200, 238, 246, 247, 0]
    assert pixels("Solarize", 1) == [0, 1, 127, 128, 200, 238, 246, 8, 0]
    assert pixels("Solarize", 30) == [255 - v for v in values]


def test_batches_cover_every_sample_once():
    x = torch.arange(10).view(10, 1)
    train = TensorBatches(x, x.flatten(), 4, generator=torch.Generator().manual_seed(0))
    seen = torch.cat([xb.flatten() for xb, _ in train])
    assert len(train) == 3 and sorted(seen.tolist()) == list(range(10))
    assert seen.tolist() != list(range(10))
    evaluation = TensorBatches(x, None, 4)
    assert torch.cat([xb.flatten() for xb, _ in evaluation]).tolist() == list(range(10))
    assert [len(xb) for xb, _ in evaluation] == [4, 4, 2]


def test_batches_drop_a_single_sample_tail_in_training():
    x = torch.arange(9).view(9, 1)
    train = TensorBatches(x, None, 4, generator=torch.Generator().manual_seed(0), drop_small=True)
    assert [len(xb) for xb, _ in train] == [4, 4]
    assert len(train) == 2


def test_batches_shared_between_processes_cover_each_global_batch_once():
    x = torch.arange(11).view(11, 1)

    def passes(world_size, shuffle):
        # Each process seeds its own generator alike, as EpochRNG does.
        return [list(TensorBatches(x, None, 4, rank=r, world_size=world_size, drop_small=shuffle,
                                   generator=torch.Generator().manual_seed(3) if shuffle else None))
                for r in range(world_size)]

    single, = passes(1, shuffle=True)
    shares = passes(2, shuffle=True)
    # The same permutation on every process; the last batch (3 samples) cannot give 2 each.
    assert len(single) == 3 and [len(s) for s in shares] == [2, 2]
    for step in range(2):
        joined = torch.cat([shares[0][step][0], shares[1][step][0]])
        assert joined.tolist() == single[step][0].tolist()
        assert [len(s[step][0]) for s in shares] == [2, 2]
    # Evaluation: contiguous shares, every sample exactly once, no padding.
    ordered = passes(3, shuffle=False)
    assert [torch.cat([b for b, _ in s]).flatten().tolist() for s in ordered] == \
        [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]]


def test_normalize_first_used_under_inference_mode_then_in_training():
    normalize = Normalize((0.5,) * 3, (0.5,) * 3)
    x, _ = batch(2)
    with torch.inference_mode():
        normalize(x, None)
    image = (x.float() / 255).requires_grad_()  # a gradient with respect to the input
    out, _ = normalize(image, None)
    out.sum().backward()  # the cached constants are normal tensors autograd may save
    assert torch.allclose(image.grad, torch.full_like(image, 2.0))
