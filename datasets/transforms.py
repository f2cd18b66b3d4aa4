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
   pixel values: :class:`RandomScale` (bilinear resampling), :class:`ColorJitter`,
   :class:`RandomResizedCrop` (bicubic resampling) and :class:`RandAugment` take [0, 1] floats only
   and refuse uint8, so a preset that forgets the conversion fails loudly instead of converting twice
   or not at all. All of them return [0, 1] floats; :class:`RandAugment` computes on the 0..255 grid
   (it quantises on entry, as timm's RandAugment works on uint8 PIL images) and returns values
   ``k / 255``, and a flip between it and the crop stays exact on floats.
3. :class:`Normalize` takes either kind: uint8 (the /255 folded into its affine map), where no op
   needs floats before it, or [0, 1] floats. Ops after it work on normalised floats:
   :class:`RandomErasing` (zeros or standard normal noise: both are meant in normalised space) and
   :class:`MixupCutmix`, and in the BEiT presets :class:`Resize` (whose bilinear resampling needs
   floats, so normalisation is their conversion) and the crop and flip.

BEiT's fine-tuning augmentation (timm's ``create_transform(is_training=True, auto_augment=
'rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25, re_mode='pixel')``) is, in this
convention: ``ToFloat, RandomResizedCrop(224), RandomFlip, RandAugment(9, 0.5), Normalize,
RandomErasing(0.25, mode="pixel")`` (our erasing draws its box as torchvision does, not in
timm's 10 attempts).

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
    """Crop ``size`` x ``size`` at an independent random position per sample, after padding.

    Equivalent to torchvision's ``RandomCrop(size, padding, fill)`` applied to each image, done as one
    gather for the whole batch. The padding is 0 (black uint8 images, the mean of normalised ones) or,
    with ``fill``, a value per channel (the mean colour of [0, 1] images, say).
    """

    def __init__(self, size, padding=0, fill=None):
        self.size = size
        self.padding = padding
        self.fill = None if fill is None else tuple(float(f) for f in fill)

    def __call__(self, x, y, rng):
        p, s = self.padding, self.size
        if p and self.fill is None:
            x = F.pad(x, (p, p, p, p))
        elif p:
            fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = F.pad(x - fill, (p, p, p, p)) + fill
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
        fill = "" if self.fill is None else f", fill={self.fill}"
        return f"RandomCrop({self.size}, padding={self.padding}{fill})"


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


def _bicubic_aa_matrix(start, length, in_size, out_size):
    """Interpolation matrices (B, out_size, in_size) resampling a window of each sample to ``out_size``.

    The window of sample b is ``[start[b], start[b] + length[b])`` of an axis of ``in_size`` pixels. The
    kernel is PIL's bicubic (a = -0.5), which torchvision's ``resize(..., BICUBIC, antialias=True)`` uses
    on tensors: a pixel centre at ``scale * (i + 0.5)`` of the window (``scale = length / out_size``), the
    support widened by ``scale`` when shrinking, taps cut at the window's edge and renormalised.
    """
    start, length = start.double(), length.double()
    scale = (length / out_size)[:, None, None]  # (B, 1, 1)
    support = 2.0 * scale.clamp(min=1.0)
    centre = scale * (torch.arange(out_size, device=start.device, dtype=torch.float64)[None, :, None] + 0.5)
    pos = torch.arange(in_size, device=start.device, dtype=torch.float64)[None, None, :] - start[:, None, None]
    lo = (centre - support + 0.5).floor().clamp(min=0.0)
    hi = torch.minimum((centre + support + 0.5).floor(), length[:, None, None])
    t = ((pos - centre + 0.5) / scale.clamp(min=1.0)).abs()
    a = -0.5
    w = torch.where(t < 1.0, ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0,
                    torch.where(t < 2.0, (((t - 5.0) * t + 8.0) * t - 4.0) * a, torch.zeros_like(t)))
    w = w * ((pos >= lo) & (pos < hi))
    total = w.sum(-1, keepdim=True)
    return (w / torch.where(total == 0, torch.ones_like(total), total)).float()


class RandomResizedCrop:
    """A random box of each sample resampled to ``size`` x ``size`` (Szegedy et al., CVPR 2015), as
    BEiT's fine-tuning crops: torchvision's ``RandomResizedCrop(size, scale, ratio, BICUBIC)``.

    The box is drawn as torchvision's ``get_params`` draws it, for all samples and all 10 attempts at
    once: an area fraction uniform in ``scale``, an aspect ratio log-uniform in ``ratio``, the first
    attempt whose rounded width and height fit the image, at a uniform position; a sample with no such
    attempt takes the central crop of the image with its ratio clamped into ``ratio``. The box is then
    resampled with the antialiased bicubic kernel of ``resize(..., BICUBIC, antialias=True)`` as two
    per-sample interpolation matrices, ``Wr @ x @ Wc^T`` (exact for any box size, up to float32 sums).

    Takes float images in [0, 1] (after :class:`ToFloat`; uint8 is refused) and returns [0, 1] floats,
    clamped as PIL clamps its bicubic overshoot (PIL rounds to uint8 too; the rounding is left to
    :class:`RandAugment`, which quantises on entry). Classification only: targets are not touched.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        self.size = size
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self._tables = {}

    def draw_boxes(self, b, h, w, rng, device):
        """(B, 4) boxes ``(top, left, height, width)`` as int64, drawn as torchvision's ``get_params``."""
        gen = rng.device
        frac = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(b, 10, device=device, generator=gen)
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = (lo + (hi - lo) * torch.rand(b, 10, device=device, generator=gen).double()).exp()
        area = frac.double() * (h * w)
        bw = (area * aspect).sqrt().round()
        bh = (area / aspect).sqrt().round()
        fits = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first attempt that fits
        bw, bh = bw.gather(1, first).squeeze(1), bh.gather(1, first).squeeze(1)
        u = torch.rand(b, 2, device=device, generator=gen).double()
        top = (u[:, 0] * (h - bh + 1)).floor().clamp(max=h - bh)
        left = (u[:, 1] * (w - bw + 1)).floor().clamp(max=w - bw)
        # The fallback: the central crop, with the image's ratio clamped into the range.
        if w / h < self.ratio[0]:
            fw, fh = w, int(round(w / self.ratio[0]))
        elif w / h > self.ratio[1]:
            fw, fh = int(round(h * self.ratio[1])), h
        else:
            fw, fh = w, h
        found = fits.any(1)
        boxes = torch.stack([
            torch.where(found, top, torch.full_like(top, (h - fh) // 2)),
            torch.where(found, left, torch.full_like(left, (w - fw) // 2)),
            torch.where(found, bh, torch.full_like(bh, fh)),
            torch.where(found, bw, torch.full_like(bw, fw)),
        ], 1)
        return boxes.long()

    def _matrix(self, start, length, in_size, dtype):
        """(B, size, in_size) interpolation matrices of the windows ``[start, start + length)``.

        A window's weights depend on its length only, so they come from a table of all lengths
        (built once per axis size and device) shifted to each start: a gather, not the kernel again.
        """
        key = (in_size, start.device, dtype)
        if key not in self._tables:
            with torch.inference_mode(False):
                lengths = torch.arange(1, in_size + 1, device=start.device)
                table = _bicubic_aa_matrix(torch.zeros_like(lengths), lengths, in_size, self.size).to(dtype)
                self._tables[key] = torch.cat([torch.zeros_like(table[:1]), table])  # [length, out, pos]
        pos = torch.arange(in_size, device=start.device)[None, :] - start[:, None]  # (B, in_size)
        inside = (pos >= 0) & (pos < length[:, None])
        index = pos.clamp(0, in_size - 1)[:, None, :].expand(-1, self.size, -1)
        return self._tables[key][length].gather(2, index) * inside[:, None, :]

    def crop_resize(self, x, boxes):
        """Each sample's box (``(top, left, height, width)`` rows) resampled to ``size`` x ``size``."""
        _, _, h, w = x.shape
        rows = self._matrix(boxes[:, 0], boxes[:, 2], h, x.dtype)  # (B, size, H)
        cols = self._matrix(boxes[:, 1], boxes[:, 3], w, x.dtype)  # (B, size, W)
        out = rows[:, None] @ x @ cols.transpose(1, 2)[:, None]
        return out.clamp_(0.0, 1.0)

    def __call__(self, x, y, rng):
        _needs_floats(self, x)
        b, _, h, w = x.shape
        return self.crop_resize(x, self.draw_boxes(b, h, w, rng, x.device)), y

    def __repr__(self):
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


def _col(t):
    """A per-sample value (B,) shaped to broadcast over (B, C, H, W)."""
    return t.view(-1, 1, 1, 1)


def _truncate(v):
    """Clamp to the uint8 range and truncate, as torchvision's ``.to(torch.uint8)`` after its blends."""
    return v.clamp(0.0, 255.0).floor()


def _grey(v):
    """torchvision's ITU-R 601 grey of uint8 pixels (floored), with its very float32 operations."""
    r, g, b = v.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor().unsqueeze(1)


def _fused(a, b, s):
    """``a + b * s`` in float32 with one rounding: torchvision's ``a.add_(b, alpha=s)``, which is a fused
    multiply-add on the CPU. Done in float64 (``b * s`` of two float32 values is exact there), so it
    gives the same bits whatever kernel the broadcasting picks. ``s`` is a float64 (B,) tensor."""
    return (a.double() + b.double() * _col(s).float().double()).float()


def _blend(v, other, factor):
    """torchvision's uint8 ``_blend``: ``v * f + other * (1 - f)`` (the second term fused), truncated."""
    return _truncate(_fused(v * _col(factor).float(), other, 1.0 - factor))


def _autocontrast(v):
    lo = v.amin((2, 3), keepdim=True)
    hi = v.amax((2, 3), keepdim=True)
    flat = hi == lo
    inv_scale = torch.where(flat, torch.ones_like(hi), (hi - lo) * (1.0 / 255.0))
    return _truncate((v - torch.where(flat, torch.zeros_like(lo), lo)) / inv_scale)


def _equalize(v):
    # PIL's lookup table, as torchvision computes it per image and channel: from the cumulative
    # histogram, in steps of (pixels not of the top value) // 255; a channel with step 0 is left as it is.
    b, c, h, w = v.shape
    flat = v.reshape(b, c, h * w).long()
    hist = torch.zeros(b, c, 256, dtype=torch.long, device=v.device).scatter_add_(2, flat, torch.ones_like(flat))
    cum = hist.cumsum(2)
    top = hist.gather(2, cum.argmax(2, keepdim=True))
    step = (h * w - top) // 255
    lut = ((cum[..., :-1] + step // 2) // step.clamp(min=1)).clamp(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], 2)
    out = torch.where(step > 0, lut.gather(2, flat), flat)
    return out.view(b, c, h, w).to(v.dtype)


def _sharpness(v, factor):
    # Blend with torchvision's smoothed image (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1 over 13, rounded) inside
    # the one-pixel border, which stays as it is.
    c = v.shape[1]
    a, b = 1.0 / 13.0, 5.0 / 13.0  # rounded to float32 from the float64 quotients, as torchvision's
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=v.dtype, device=v.device)
    smooth = F.conv2d(v, kernel.expand(c, 1, 3, 3), groups=c).round()
    inner = v[..., 1:-1, 1:-1]
    out = v.clone()
    out[..., 1:-1, 1:-1] = _fused(inner, smooth - inner, 1.0 - factor)
    return _truncate(out)


class RandAugment:
    """timm's RandAugment ``rand-m{magnitude}-mstd{magnitude_std}-inc1`` (Cubuk et al., NeurIPS 2020
    workshop), the policy BEiT fine-tunes with, batched.

    Each sample draws ``num_ops`` ops from the 15 below (with replacement), each applied with
    probability ``prob`` at a magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10], with a random
    sign where timm negates the argument (+-). Level ``m`` maps to timm's arguments:

    ====================  =========================================  ===========================================
    op                    argument at level m                        as torchvision.transforms.v2.functional
    ====================  =========================================  ===========================================
    AutoContrast          --                                         autocontrast
    Equalize              --                                         equalize
    Invert                --                                         invert
    Rotate                +-m/10 * 30 degrees                        rotate(angle), about the centre
    PosterizeIncreasing   keep 4 - int(m/10 * 4) bits                posterize(bits)
    SolarizeIncreasing    threshold 256 - min(256, int(m/10 * 256))  solarize(threshold)
    SolarizeAdd           add min(128, int(m/10 * 110)) below 128    (timm's own lookup table)
    ColorIncreasing       factor max(0.1, 1 +- m/10 * 0.9)          adjust_saturation(factor)
    ContrastIncreasing    factor max(0.1, 1 +- m/10 * 0.9)          adjust_contrast(factor)
    BrightnessIncreasing  factor max(0.1, 1 +- m/10 * 0.9)          adjust_brightness(factor)
    SharpnessIncreasing   factor max(0.1, 1 +- m/10 * 0.9)          adjust_sharpness(factor)
    ShearX                input x = x + s*y, s = +-m/10 * 0.3        affine(shear=(atan s, 0), center=(0, 0))
    ShearY                input y = y + s*x, s = +-m/10 * 0.3        affine(shear=(0, atan s), center=(0, 0))
    TranslateXRel         input x = x + t*W, t = +-m/10 * 0.45       affine(translate=(-t*W, 0))
    TranslateYRel         input y = y + t*H, t = +-m/10 * 0.45       affine(translate=(0, -t*H))
    ====================  =========================================  ===========================================

    Takes float images in [0, 1] (uint8 is refused) and works on their 0..255 grid, as timm works on
    uint8 PIL images: the batch is quantised on entry (``round(x * 255)``), every op returns values on
    the grid with torchvision's uint8 rounding, and the result comes back as [0, 1] floats (``k / 255``,
    what ToTensor gives). Each pixel-value op equals the torchvision functional op on the same uint8
    pixels exactly. Where this differs from timm: timm runs PIL's ops, whose uint8 arithmetic rounds
    where torchvision's truncates (the enhance blends, PIL's grey), and timm's geometric ops resample
    bicubically with PIL (BEiT passes ``interpolation='bicubic'``), while these are one bilinear
    ``F.grid_sample`` per op through per-sample inverse maps, the ``fill`` colour blended in by
    coverage at the border, as torchvision's ``affine(..., BILINEAR, fill)`` on tensors. The geometry
    itself is timm's: rotation about the centre, shears about the top-left corner (PIL's matrix
    ``(1, s, 0, 0, 1, 0)``; torchvision's own RandAugment uses ``center=(0, 0)`` for the same reason),
    translation by a fraction of the size.

    Per-sample draws come from ``rng.device``; each (layer, op) runs once on the samples that drew it
    (an index select, one computation per op), which needs the (B, num_ops) table of choices on the host
    once per call. Targets are not touched (classification).
    """

    OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
           "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
           "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

    def __init__(self, magnitude=9.0, magnitude_std=0.5, num_ops=2, prob=0.5, fill=(0.5, 0.5, 0.5)):
        if not 0.0 <= magnitude_std < math.inf:
            raise ValueError(f"magnitude_std {magnitude_std}: must be finite and >= 0")
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.num_ops = int(num_ops)
        self.prob = float(prob)
        self.fill = tuple(float(f) for f in fill)

    def __call__(self, x, y, rng):
        _needs_floats(self, x)
        b, n, dev, gen = x.shape[0], self.num_ops, x.device, rng.device
        op = torch.randint(0, len(self.OPS), (b, n), device=dev, generator=gen)
        apply = torch.rand(b, n, device=dev, generator=gen) < self.prob
        magnitude = (self.magnitude + self.magnitude_std * torch.randn(b, n, device=dev, generator=gen)).clamp(0, 10)
        sign = torch.where(torch.rand(b, n, device=dev, generator=gen) < 0.5, -1.0, 1.0)
        choices = torch.where(apply, op, -1).cpu()  # the one host copy: which samples run which op
        v = (x.float() * 255.0).round()
        for layer in range(n):
            for k in choices[:, layer].unique().tolist():
                if k < 0:
                    continue
                idx = (choices[:, layer] == k).nonzero().squeeze(1).to(dev)
                out = self.apply_op(self.OPS[k], v.index_select(0, idx), magnitude[idx, layer], sign[idx, layer])
                v.index_copy_(0, idx, out)  # v is this call's own tensor
        return (v / 255.0).to(x.dtype), y

    def apply_op(self, name, v, magnitude, sign):
        """One op on a batch ``v`` of pixel values on the 0..255 grid (float), per-sample ``magnitude``
        (levels in [0, 10]) and ``sign`` (+-1, used by the ops timm negates at random)."""
        m = magnitude.double() / 10.0
        s = sign.double()
        if name == "AutoContrast":
            return _autocontrast(v)
        if name == "Equalize":
            return _equalize(v)
        if name == "Invert":
            return 255.0 - v
        if name == "PosterizeIncreasing":
            step = _col(2.0 ** (8 - (4 - (m * 4.0).floor()))).to(v.dtype)
            return (v / step).floor() * step
        if name == "SolarizeIncreasing":
            threshold = _col(256.0 - (m * 256.0).floor().clamp(max=256.0)).to(v.dtype)
            return torch.where(v >= threshold, 255.0 - v, v)
        if name == "SolarizeAdd":
            add = _col((m * 110.0).floor().clamp(max=128.0)).to(v.dtype)
            return torch.where(v < 128.0, (v + add).clamp(max=255.0), v)
        if name.endswith("Increasing"):  # the four enhance ops
            factor = (1.0 + s * (m * 0.9)).clamp(min=0.1)
            if name == "ColorIncreasing":
                return _blend(v, _grey(v), factor)
            if name == "ContrastIncreasing":
                return _blend(v, _grey(v).mean((1, 2, 3), keepdim=True), factor)
            if name == "BrightnessIncreasing":
                return _truncate(v * _col(factor).float())
            return _sharpness(v, factor)
        return self._affine(v, self._inverse_map(name, m * s, v.shape[-2], v.shape[-1]))

    @staticmethod
    def _inverse_map(name, level, h, w):
        """(B, 2, 3) float64 maps from output to input pixel coordinates centred on the image, per sample,
        from ``level``: the signed fraction of the largest argument (magnitude / 10, times the sign)."""
        theta = torch.zeros(level.shape[0], 2, 3, dtype=torch.float64, device=level.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if name == "Rotate":  # counter-clockwise by the angle, about the centre
            angle = level * 30.0 * (math.pi / 180.0)
            theta[:, 0, 0] = theta[:, 1, 1] = angle.cos()
            theta[:, 0, 1], theta[:, 1, 0] = -angle.sin(), angle.sin()
        elif name == "ShearX":  # about the top-left corner, as PIL's (1, s, 0, 0, 1, 0)
            theta[:, 0, 1], theta[:, 0, 2] = level * 0.3, level * 0.3 * (h / 2)
        elif name == "ShearY":
            theta[:, 1, 0], theta[:, 1, 2] = level * 0.3, level * 0.3 * (w / 2)
        elif name == "TranslateXRel":
            theta[:, 0, 2] = level * 0.45 * w
        elif name == "TranslateYRel":
            theta[:, 1, 2] = level * 0.45 * h
        else:
            raise ValueError(f"unknown RandAugment op {name!r}: one of {', '.join(RandAugment.OPS)}")
        return theta

    def _affine(self, v, theta):
        """Bilinear resampling through per-sample inverse maps, the fill colour blended in by coverage and
        rounded, as torchvision's ``affine`` on uint8 tensors."""
        b, c, h, w = v.shape
        # The grid as torchvision builds it: output pixel centres in pixel units centred on the image,
        # mapped by theta, then scaled to grid_sample's [-1, 1]. F.affine_grid (scale first, then map)
        # is the same map, but its other float32 rounding moves ~0.1% of the pixels by one level.
        base = torch.ones(h, w, 3, dtype=v.dtype, device=v.device)
        base[..., 0] = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, dtype=v.dtype, device=v.device)
        base[..., 1] = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, dtype=v.dtype, device=v.device)[:, None]
        half = torch.tensor([0.5 * w, 0.5 * h], dtype=v.dtype, device=v.device)
        grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(theta.to(v.dtype).transpose(1, 2) / half)
        grid = grid.view(b, h, w, 2)
        ones = torch.ones(b, 1, h, w, dtype=v.dtype, device=v.device)
        sampled = F.grid_sample(torch.cat([v, ones], 1), grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        fill = torch.tensor(self.fill, dtype=v.dtype, device=v.device).mul(255.0).round().view(1, -1, 1, 1)
        image, cover = sampled[:, :c], sampled[:, c:]
        return ((image - fill) * cover + fill).round().clamp(0.0, 255.0)

    def __repr__(self):
        return (f"RandAugment(magnitude={self.magnitude}, magnitude_std={self.magnitude_std}, "
                f"num_ops={self.num_ops}, prob={self.prob}, fill={self.fill})")


class RandomErasing:
    """Erase one random rectangle of each sample with probability ``p`` (Zhong et al., AAAI 2020).

    The rectangle covers a share of the image drawn from ``scale`` with an aspect ratio drawn
    log-uniformly from ``ratio``, as torchvision's RandomErasing. The op comes after normalisation:

    - ``mode="zero"``: the rectangle is set to 0, the mean of a normalised image;
    - ``mode="pixel"``: it is filled with independent standard normal values per pixel and channel,
      noise in normalised space, as timm's ``RandomErasing(mode='pixel')`` (BEiT's ``re_mode``). The
      noise is drawn after all the draws of the zero mode, so that mode's stream is the same as before.

    Labels are not touched.
    """

    MODES = ("zero", "pixel")

    def __init__(self, p=0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3), mode="zero"):
        if mode not in self.MODES:
            raise ValueError(f"RandomErasing mode {mode!r}: one of {', '.join(self.MODES)}")
        self.p, self.scale, self.ratio, self.mode = p, scale, ratio, mode

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
        erased = (box & erase.view(-1, 1, 1)).unsqueeze(1)
        if self.mode == "zero":
            return x.masked_fill(erased, 0.0), y
        noise = torch.randn(x.shape, dtype=x.dtype, device=dev, generator=gen)
        return torch.where(erased, noise, x), y

    def __repr__(self):
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, mode={self.mode!r})"


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
