"""Augmentation as batched tensor operations on whatever device the batch is on.

Every op is called as ``op(x, y, rng) -> (x, y)`` on a whole batch: ``x`` images (B, C, H, W),
``y`` targets (class indices (B,), or masks (B, H, W) that follow every geometric change of the
image; :class:`TrivialAugmentWide`, for classification, refuses masks), ``rng`` an
:class:`utils.runtime.EpochRNG` (``None`` for deterministic ops). No op loops over samples in
Python. Random draws come only from ``rng.device`` (per-sample values, on the batch's device) and
``rng.np`` (per-batch scalars), so a run is the same for the same (seed, epoch).
"""
import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF


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


class Normalize:
    """uint8 (or float in [0, 1]) images to float ``(x / 255 - mean) / std``."""

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

    Takes uint8 (or [0, 1] float) images and returns [0, 1] floats (what :class:`Normalize`
    takes), so it comes before normalisation. Contrast blends with each image's mean grey,
    saturation with its own grey (ITU-R 601 luma), as torchvision's ColorJitter does per image.
    """

    LUMA = (0.299, 0.587, 0.114)

    def __init__(self, strength):
        self.strength = strength

    def __call__(self, x, y, rng):
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
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


def _inverse_affine(center, angle, translate, shear):
    """The inverse affine matrix (6 doubles) torchvision samples with, at scale 1.

    As ``torchvision.transforms.v2.functional.affine`` computes it (``_get_inverse_affine_matrix``): the
    rotation ``angle`` and ``shear`` (x, y) in degrees, about ``center`` given relative to the image centre,
    then ``translate`` in pixels; same operations in the same order, so the float32 matrices match exactly.
    """
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return m


def _blend(x, degenerate, ratio, complement):
    """``ratio * x + (1 - ratio) * degenerate`` per sample, ``x`` the float of uint8 images, truncated to uint8
    as torchvision's blend.

    ``complement`` is ``1 - ratio`` computed in double before the cast to float32, as torchvision's Python
    float is, so the factors are the very ones torchvision multiplies by.
    """
    return (x * ratio + degenerate.float() * complement).clamp_(0, 255).to(torch.uint8)


class TrivialAugmentWide:
    """TrivialAugment with the wide op space, each sample its own op (Müller & Hutter, "TrivialAugment:
    Tuning-free Yet State-of-the-Art Data Augmentation", ICCV 2021).

    Each sample draws one of the 14 :attr:`OPS` uniformly, one of ``num_magnitude_bins`` magnitudes uniformly
    and, for a signed op, a sign: the op space, magnitudes and zero fill of torchvision's
    ``transforms.TrivialAugmentWide`` (translations up to 32 pixels whatever the image size, as there). Takes
    and returns uint8 (B, 3, H, W), so it comes before :class:`Normalize`; labels are not touched.

    Geometric ops use torchvision's inverse matrices (shears about the top-left corner, as torchvision's op
    passes ``center=[0, 0]``; translations and rotations about the centre) and its sampling grid, one per
    sample, in one nearest-neighbour ``grid_sample`` for the batch. Colour ops blend with per-sample factors
    against the degenerate images of torchvision's batched kernels (grey, mean grey, the blur of
    ``adjust_sharpness``, black), or run its batched posterize, solarize, autocontrast and equalize.

    Measured on the CPU (64 random 32x32 images, every op, bin and sign), each op gives the result of
    torchvision's ``transforms.TrivialAugmentWide`` (its v1 kernels) bit for bit, except AutoContrast, which
    is the v2 kernel (v1 rounds differently: one level on about 1 pixel in 10^4); the v2 kernels associate
    the blend differently and differ from both by one level on 0.03% of the pixels of Color and 1% of
    Sharpness's.

    Differences from torchvision, none in the distribution of what is applied: every sample draws a bin and
    a sign whether or not its op uses them (torchvision draws them only when it does); every op is computed
    for the whole batch and each sample keeps its own op's result (no data-dependent indexing, no host sync).
    """

    OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
           "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
    GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

    def __init__(self, num_magnitude_bins=31):
        self.num_magnitude_bins = num_magnitude_bins
        self._cache = {}

    def space(self):
        """``{op: (magnitudes, signed)}`` exactly as torchvision's ``TrivialAugmentWide._augmentation_space``."""
        n = self.num_magnitude_bins
        unit = torch.linspace(0.0, 0.99, n)
        return {
            "Identity": (torch.tensor(0.0), False),
            "ShearX": (unit, True),
            "ShearY": (unit, True),
            "TranslateX": (torch.linspace(0.0, 32.0, n), True),
            "TranslateY": (torch.linspace(0.0, 32.0, n), True),
            "Rotate": (torch.linspace(0.0, 135.0, n), True),
            "Brightness": (unit, True),
            "Color": (unit, True),
            "Contrast": (unit, True),
            "Sharpness": (unit, True),
            "Posterize": (8 - (torch.arange(n) / ((n - 1) / 6)).round().int(), False),
            "Solarize": (torch.linspace(255.0, 0.0, n), False),
            "AutoContrast": (torch.tensor(0.0), False),
            "Equalize": (torch.tensor(0.0), False),
        }

    def _matrix(self, name, m, h, w):
        """torchvision's inverse matrix of geometric op ``name`` at signed magnitude ``m`` (identity otherwise)."""
        if name in ("ShearX", "ShearY"):
            shear = math.degrees(math.atan(m))
            return _inverse_affine([-0.5 * w, -0.5 * h], 0.0, [0.0, 0.0],
                                   [shear, 0.0] if name == "ShearX" else [0.0, shear])
        if name in ("TranslateX", "TranslateY"):
            # int(): torchvision truncates the pixel shift towards zero after applying the sign.
            return _inverse_affine([0.0, 0.0], 0.0, [float(int(m)), 0.0] if name == "TranslateX"
                                   else [0.0, float(int(m))], [0.0, 0.0])
        if name == "Rotate":
            # rotate() reduces the angle to [0, 360) and hands affine the opposite one.
            return _inverse_affine([0.0, 0.0], -(m % 360), [0.0, 0.0], [0.0, 0.0])
        return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]

    def _tables(self, x):
        """Every (op, bin, sign)'s parameters, computed once per device and image size in Python doubles as
        torchvision computes them, then gathered per sample: rows ``(op * bins + bin) * 2 + negative``."""
        h, w = x.shape[-2:]
        key = (x.device, h, w)
        if key not in self._cache:
            theta, geometric, ratio, complement, mask, threshold = [], [], [], [], [], []
            for name, (values, signed) in self.space().items():
                for i in range(self.num_magnitude_bins):
                    for negative in (False, True):
                        m = float(values[i]) if values.dim() else 0.0
                        m = -m if signed and negative else m
                        theta.append(self._matrix(name, m, h, w))
                        geometric.append(name in self.GEOMETRIC)
                        factor = 1.0 + m if name in ("Brightness", "Color", "Contrast", "Sharpness") else 1.0
                        ratio.append(factor)
                        complement.append(1.0 - factor)
                        bits = int(m) if name == "Posterize" else 8
                        mask.append((0xFF << (8 - bits)) & 0xFF)
                        threshold.append(m if name == "Solarize" else 256.0)
            with torch.inference_mode(False):
                dev = x.device
                theta = torch.tensor(theta, dtype=torch.float32).view(-1, 2, 3)
                # torchvision's _affine_grid: pixel centres about the image centre, normalised after theta.
                rescaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h])
                xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w)
                ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h)
                base = torch.stack([xs.expand(h, w), ys.view(h, 1).expand(h, w), torch.ones(h, w)], -1)
                self._cache[key] = dict(
                    rescaled=rescaled.to(dev), base=base.view(1, h * w, 3).to(dev),
                    geometric=torch.tensor(geometric, device=dev),
                    ratio=torch.tensor(ratio, dtype=torch.float32, device=dev),
                    complement=torch.tensor(complement, dtype=torch.float32, device=dev),
                    mask=torch.tensor(mask, dtype=torch.uint8, device=dev),
                    threshold=torch.tensor(threshold, dtype=torch.float32, device=dev))
        return self._cache[key]

    def draw(self, b, rng, device):
        """Each of ``b`` samples' op index, magnitude bin and sign (True: negative), from ``rng.device``."""
        gen = rng.device
        op = torch.randint(len(self.OPS), (b,), device=device, generator=gen)
        magnitude_bin = torch.randint(self.num_magnitude_bins, (b,), device=device, generator=gen)
        negative = torch.randint(2, (b,), device=device, generator=gen).bool()
        return op, magnitude_bin, negative

    def apply(self, x, op, magnitude_bin, negative):
        """Apply op ``OPS[op[i]]`` at bin ``magnitude_bin[i]`` (negated where ``negative[i]``) to sample ``i``.

        Args:
            x: uint8 images (B, 3, H, W).
            op, magnitude_bin, negative: (B,) tensors on ``x``'s device (see :meth:`draw`).
        """
        if x.dtype != torch.uint8:
            raise TypeError(f"TrivialAugmentWide takes uint8 images, not {x.dtype}")
        t = self._tables(x)
        b, _, h, w = x.shape
        row = (op * self.num_magnitude_bins + magnitude_bin) * 2 + negative.long()

        def per_sample(table):
            return table[row].view(b, 1, 1, 1)

        def drew(name):
            return _per_sample(op == self.OPS.index(name), x)

        # torchvision's grid is base @ rescaled theta (bmm); written out elementwise it gives the same float32
        # values, and no TF32 matmul on CUDA moves the sampling points by hundredths of a pixel.
        base, rescaled = t["base"], t["rescaled"][row]
        grid = base[..., 0:1] * rescaled[:, None, 0] + base[..., 1:2] * rescaled[:, None, 1] + rescaled[:, None, 2]
        grid = grid.view(b, h, w, 2)
        xf = x.float()
        warped = F.grid_sample(xf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        out = torch.where(per_sample(t["geometric"]), warped.round_().to(torch.uint8), x)

        ratio, complement = per_sample(t["ratio"]), per_sample(t["complement"])
        grey = TF.rgb_to_grayscale(x)  # truncated to uint8, as adjust_saturation / adjust_contrast floor it
        out = torch.where(drew("Brightness"), (xf * ratio).clamp_(0, 255).to(torch.uint8), out)
        out = torch.where(drew("Color"), _blend(xf, grey, ratio, complement), out)
        mean = grey.float().mean((-3, -2, -1), keepdim=True)
        out = torch.where(drew("Contrast"), _blend(xf, mean, ratio, complement), out)
        # Factor 0 gives adjust_sharpness's degenerate image itself: the rounded blur, the border kept.
        out = torch.where(drew("Sharpness"), _blend(xf, TF.adjust_sharpness(x, 0.0), ratio, complement), out)
        out = torch.where(drew("Posterize"), x & per_sample(t["mask"]), out)
        out = torch.where(drew("Solarize") & (x >= per_sample(t["threshold"])), 255 - x, out)
        out = torch.where(drew("AutoContrast"), TF.autocontrast(x), out)
        return torch.where(drew("Equalize"), TF.equalize(x), out)

    def __call__(self, x, y, rng):
        if y is not None and y.dim() >= 3:
            raise ValueError("TrivialAugmentWide is for class labels: it does not move masks with their images")
        return self.apply(x, *self.draw(x.shape[0], rng, x.device)), y

    def __repr__(self):
        return f"TrivialAugmentWide(num_magnitude_bins={self.num_magnitude_bins})"


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
    uint8 (or [0, 1] float) images and returns [0, 1] floats, as :class:`ColorJitter` does.
    """

    def __init__(self, lo, hi):
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, x, y, rng):
        b, _, h, w = x.shape
        dev, gen = x.device, rng.device
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
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
