"""Batched augmentation: shapes, exact semantics, and seeded determinism."""
import pytest
import torch
import torch.nn.functional as F

from datasets.loader import TensorBatches
from datasets.presets import p1_transforms
from datasets.transforms import MixupCutmix, Normalize, RandomCrop, RandomFlip, smooth_one_hot
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
