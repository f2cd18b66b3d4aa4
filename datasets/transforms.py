"""Augmentation as batched tensor operations on whatever device the batch is on.

Every op is called as ``op(x, y, rng) -> (x, y)`` on a whole batch: ``x`` images (B, C, H, W),
``y`` targets (class indices (B,), or masks (B, H, W) that follow every geometric change of the
image), ``rng`` an :class:`utils.runtime.EpochRNG` (``None`` for deterministic ops). No op loops
over samples in Python. Random draws come only from ``rng.device`` (per-sample values, on the
batch's device) and ``rng.np`` (per-batch scalars), so a run is the same for the same (seed, epoch).

One convention for the pixel values (the presets in :mod:`datasets.presets` follow it):

1. Images arrive as uint8. Geometry that only moves pixels (:class:`RandomCrop`,
   :class:`RandomFlip`, :class:`RandomTranspose`) runs on them, and is exact on floats too.
2. :class:`ToFloat` converts them once, to float in [0, 1], before the first op that computes new
   pixel values: :class:`RandomScale` (bilinear resampling) and :class:`ColorJitter` take [0, 1]
   floats only and refuse uint8, so a preset that forgets the conversion fails loudly instead of
   converting twice or not at all.
3. :class:`Normalize` takes either kind: uint8 (the /255 folded into its affine map), where no op
   needs floats before it, or [0, 1] floats. Ops after it work on normalised floats:
   :class:`RandomErasing` and :class:`MixupCutmix`, and in the BEiT presets :class:`Resize` (whose
   bilinear resampling needs floats, so normalisation is their conversion) and the crop and flip.

Exact geometry after a float op (the flips after :class:`RandomScale`) stays on floats: moving it
first would hand it other random draws, and a flip does not commute with the scale's random window.
"""
import math

import torch
import torch.nn.functional as F


class Compose:
    """Apply ops in order."""

    def __init__(self, ops):
        self.ops = list(ops)

    def __call__(self, x, y, rng=None):
        for op in self.ops:
            x, y = op(x, y, rng)
        return x, y

    def __repr__(self):
        return "Compose(" + ", ".join(map(repr, self.ops)) + ")"


class ToFloat:
    """uint8 images to float32 in [0, 1] (``x / 255``): the one conversion of a preset.

    It comes after the uint8 geometry and before the ops that need floats (:class:`RandomScale`,
    :class:`ColorJitter`). It refuses float images (a second conversion would divide by 255 twice);
    targets are not touched.
    """

    def __call__(self, x, y, rng=None):
        if x.dtype != torch.uint8:
            raise TypeError(f"ToFloat takes uint8 images, not {x.dtype}: convert once, after the uint8 geometry")
        return x.float() / 255.0, y

    def __repr__(self):
        return "ToFloat()"


def _needs_floats(op, x):
    """Refuse uint8 (or other integer) images in an op that computes on [0, 1] floats."""
    if not x.is_floating_point():
        raise TypeError(f"{type(op).__name__} takes float images in [0, 1], not {x.dtype}: "
                        "put ToFloat() before it (after the uint8 geometry)")


class Normalize:
    """Images to float ``(x / 255 - mean) / std``, from either kind the preset convention allows.

    - uint8 images (0..255): the /255 is folded into the affine map, one multiply-add per pixel,
      with no [0, 1] float copy of the batch; for presets with no op that needs floats before it.
    - float images in [0, 1] (:class:`ToFloat`'s output, or what :class:`RandomScale` and
      :class:`ColorJitter` return): multiplied back by 255 first, so both kinds go through the
      same map (for a ToFloat'ed uint8 batch, ``x * 255`` gives back the integers exactly, hence
      the very same result).
    """

    def __init__(self, mean, std):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._cache = {}

    def __call__(self, x, y, rng=None):
        key = x.device
        if key not in self._cache:
            # Built once per device (no host-to-device copy per batch), as normal tensors even
            # when the first call comes under inference_mode.
            with torch.inference_mode(False):
                mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
                std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
                # Fold /255 into the affine map: one multiply-add per pixel.
                self._cache[key] = (1.0 / (255.0 * std), mean / std)
        scale, shift = self._cache[key]
        x = x.float() if x.dtype == torch.uint8 else x * 255.0
        return x * scale - shift, y

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


class PadTo:
    """Pad (replicating the border) on the bottom and right to a multiple of ``multiple``.

    For inference on tiles of any size: the prediction is cropped back to the image's size.
    """

    def __init__(self, multiple):
        self.multiple = multiple

    def __call__(self, x, y, rng=None):
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, y

    def __repr__(self):
        return f"PadTo({self.multiple})"


class Resize:
    """Bilinear resize of float images to ``size`` x ``size``."""

    def __init__(self, size):
        self.size = size

    def __call__(self, x, y, rng=None):
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x, y

    def __repr__(self):
        return f"Resize({self.size})"


class RandomCrop:
    """Crop ``size`` x ``size`` at an independent random position per sample, after zero padding.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` applied to each image (zero padding
    of uint8 images is black, as it is on PIL images), done as one gather for the whole batch.
    """

    def __init__(self, size, padding=0):
        self.size = size
        self.padding = padding

    def __call__(self, x, y, rng):
        p, s = self.padding, self.size
        if p:
            x = F.pad(x, (p, p, p, p))
        b, _, h, w = x.shape
        top = torch.randint(0, h - s + 1, (b,), device=x.device, generator=rng.device)
        left = torch.randint(0, w - s + 1, (b,), device=x.device, generator=rng.device)
        offsets = torch.arange(s, device=x.device)
        rows = (top[:, None] + offsets)[:, None, :, None]  # (B, 1, s, 1)
        cols = (left[:, None] + offsets)[:, None, None, :]  # (B, 1, 1, s)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return x[batch, chans, rows, cols], y

    def __repr__(self):
        return f"RandomCrop({self.size}, padding={self.padding})"


class RandomFlip:
    """Flip each sample with probability ``p`` along ``dim`` (-1 horizontal, -2 vertical).

    Masks (targets with spatial dimensions) are flipped with their images.
    """

    def __init__(self, p=0.5, dim=-1):
        self.p = p
        self.dim = dim

    def __call__(self, x, y, rng):
        flip = torch.rand(x.shape[0], device=x.device, generator=rng.device) < self.p
        x = torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(self.dim), x)
        if y is not None and y.dim() >= 3:
            y = torch.where(flip.view(-1, *([1] * (y.dim() - 1))), y.flip(self.dim), y)
        return x, y

    def __repr__(self):
        return f"RandomFlip(p={self.p}, dim={self.dim})"


def _per_sample(flags, t):
    """``flags`` (B,) shaped to broadcast over a batch ``t`` (B, ...)."""
    return flags.view(-1, *([1] * (t.dim() - 1)))


class RandomTranspose:
    """Swap the two spatial axes of each sample with probability ``p`` (masks with their images).

    With horizontal and vertical flips (p = 0.5 each) it draws every one of the 8 symmetries of
    the square (the dihedral group D4: rotations by 90 degrees, mirrored or not) with equal
    probability: the augmentation for overhead imagery, which has no up or left.
    """

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, x, y, rng):
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"RandomTranspose needs square images, not {x.shape[-2]}x{x.shape[-1]}")
        swap = torch.rand(x.shape[0], device=x.device, generator=rng.device) < self.p
        x = torch.where(_per_sample(swap, x), x.transpose(-2, -1), x)
        if y is not None and y.dim() >= 3:
            y = torch.where(_per_sample(swap, y), y.transpose(-2, -1), y)
        return x, y

    def __repr__(self):
        return f"RandomTranspose(p={self.p})"


class ColorJitter:
    """Random brightness, contrast and saturation per sample, each factor from [1 - s, 1 + s].

    Takes float images in [0, 1] only (after :class:`ToFloat`; uint8 is refused with a TypeError)
    and returns [0, 1] floats (what :class:`Normalize` takes), so it comes between the two.
    Contrast blends with each image's mean grey, saturation with its own grey (ITU-R 601 luma), as
    torchvision's ColorJitter does per image.
    """

    LUMA = (0.299, 0.587, 0.114)

    def __init__(self, strength):
        self.strength = strength

    def __call__(self, x, y, rng):
        _needs_floats(self, x)
        b = x.shape[0]

        def factor():
            u = torch.rand(b, 1, 1, 1, device=x.device, generator=rng.device)
            return 1.0 + self.strength * (2.0 * u - 1.0)

        luma = torch.tensor(self.LUMA, device=x.device).view(1, 3, 1, 1)
        x = (x * factor()).clamp(0, 1)  # brightness
        grey = (x * luma).sum(1, keepdim=True)
        x = (grey.mean((2, 3), keepdim=True) + factor() * (x - grey.mean((2, 3), keepdim=True))).clamp(0, 1)
        grey = (x * luma).sum(1, keepdim=True)
        x = (grey + factor() * (x - grey)).clamp(0, 1)  # saturation
        return x, y

    def __repr__(self):
        return f"ColorJitter({self.strength})"


class RandomErasing:
    """Erase one random rectangle of each sample with probability ``p`` (Zhong et al., AAAI 2020).

    The rectangle covers a share of the image drawn from ``scale`` with an aspect ratio drawn
    log-uniformly from ``ratio``, as torchvision's RandomErasing; it is set to 0, the mean of a
    normalised image, so the op comes after normalisation. Labels are not touched.
    """

    def __init__(self, p=0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
        self.p, self.scale, self.ratio = p, scale, ratio

    def __call__(self, x, y, rng):
        b, _, h, w = x.shape
        dev, gen = x.device, rng.device

        def uniform(lo, hi):
            return lo + (hi - lo) * torch.rand(b, device=dev, generator=gen)

        area = uniform(*self.scale) * h * w
        aspect = uniform(math.log(self.ratio[0]), math.log(self.ratio[1])).exp()
        eh = (area * aspect).sqrt().round().clamp(1, h)
        ew = (area / aspect).sqrt().round().clamp(1, w)
        top = (uniform(0, 1) * (h - eh + 1)).floor()
        left = (uniform(0, 1) * (w - ew + 1)).floor()
        erase = torch.rand(b, device=dev, generator=gen) < self.p
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        box = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
               & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
        return x.masked_fill((box & erase.view(-1, 1, 1)).unsqueeze(1), 0.0), y

    def __repr__(self):
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio})"


def smooth_one_hot(y, num_classes, smoothing):
    """Integer labels (B,) to label-smoothed one-hot rows (B, num_classes)."""
    off = smoothing / num_classes
    target = torch.full((y.shape[0], num_classes), off, device=y.device)
    return target.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


class MixupCutmix:
    """Mixup or CutMix per batch with label smoothing, as timm's ``Mixup`` in ``batch`` mode.

    Each batch is mixed with itself reversed. With probability ``switch_prob`` the batch uses
    CutMix (ratio from Beta(cutmix_alpha, cutmix_alpha), one box, the ratio corrected to the
    clipped box area), otherwise Mixup (ratio from Beta(mixup_alpha, mixup_alpha)). A batch is mixed at
    all with probability ``prob`` (timm's ``mix_prob``); an unmixed one keeps its images and still gets
    the smoothed one-hot rows. Targets are always soft (B, num_classes) rows, which
    ``nn.CrossEntropyLoss`` accepts as probabilities.
    """

    def __init__(self, num_classes, mixup_alpha=0.1, cutmix_alpha=1.0, switch_prob=0.5, smoothing=0.1, prob=1.0):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.smoothing = smoothing
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mixing probability {prob}: not in [0, 1]")
        self.prob = prob

    def __call__(self, x, y, rng):
        target = smooth_one_hot(y, self.num_classes, self.smoothing)
        # Drawn only when it can matter: with prob 1 the stream of draws is the one runs had before prob existed.
        if self.prob < 1.0 and rng.np.random() >= self.prob:
            return x, target
        use_cutmix = rng.np.random() < self.switch_prob
        if use_cutmix:
            lam = float(rng.np.beta(self.cutmix_alpha, self.cutmix_alpha))
            h, w = x.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(rng.np.integers(0, h)), int(rng.np.integers(0, w))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        else:
            lam = float(rng.np.beta(self.mixup_alpha, self.mixup_alpha))
            x = x * lam + x.flip(0) * (1.0 - lam)
        return x, target * lam + target.flip(0) * (1.0 - lam)

    def __repr__(self):
        return (f"MixupCutmix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"switch_prob={self.switch_prob}, smoothing={self.smoothing}, prob={self.prob})")


class RandomScale:
    """Scale each sample by a factor drawn uniformly from [lo, hi] and keep a random window of its
    size (DeepLab's multi-scale training: Chen et al., TPAMI 2018; torchvision's segmentation
    reference), image and mask through one sampling grid.

    The image is resampled bilinearly and the mask by nearest neighbour, so masks stay hard labels
    on the same pixels as their tiles. Where a shrunk sample does not fill the window, both are
    mirrored at its border (rather than padded with a fill the loss would have to ignore). Takes
    float images in [0, 1] only (after :class:`ToFloat`; uint8 is refused with a TypeError, the
    bilinear resampling computes new values) and returns [0, 1] floats, as :class:`ColorJitter`.
    """

    def __init__(self, lo, hi):
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, x, y, rng):
        _needs_floats(self, x)
        x = x.float()  # the sampling grid is float32
        b, _, h, w = x.shape
        dev, gen = x.device, rng.device
        scale = self.lo + (self.hi - self.lo) * torch.rand(b, device=dev, generator=gen)
        # The window covers 1/scale of the sample (in normalised coordinates, from -1 to 1); its
        # centre moves by up to |1 - 1/scale|: inside a grown sample, or the sample inside the window.
        span = (1.0 - 1.0 / scale).abs()
        shift = (2.0 * torch.rand(b, 2, device=dev, generator=gen) - 1.0) * span[:, None]
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if y is not None and y.dim() >= 3:
            labels = F.grid_sample(y.unsqueeze(1).float(), grid, mode="nearest", padding_mode="reflection",
                                   align_corners=False)
            y = labels.squeeze(1).round().to(y.dtype)
        return x, y

    def __repr__(self):
        return f"RandomScale({self.lo}, {self.hi})"
