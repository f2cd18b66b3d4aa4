"""Augmentation presets of the recipes, as batched transforms (train, eval), and inference's.

Each preset follows the convention of :mod:`datasets.transforms`: geometry on the uint8 images,
at most one conversion to [0, 1] floats (:class:`ToFloat`, right before the first op that needs
floats), the colour ops on floats, then :class:`Normalize`.
"""
from datasets.transforms import (ColorJitter, Compose, MixupCutmix, Normalize, PadTo, RandAugment, RandomCrop,
                                 RandomErasing, RandomFlip, RandomResizedCrop, RandomScale, RandomTranspose, Resize,
                                 ToFloat)

P2_STRIDE = 32  # the segmenters' output stride (or a multiple of theirs): inputs are padded to it

CROP_FLIP = "crop-flip"
BEIT_PRESETS = ("beit", "beit-224", "beit-ft")  # inputs resized to BEiT's 224
P1_AUGMENTS = (CROP_FLIP, *BEIT_PRESETS, "none")
BEIT_SIZE = 224
# Each BEiT preset's resize and crop (size, padding), and its mixing (mixup alpha, cutmix alpha), if any.
_BEIT_GEOMETRY = {"beit": (256, 0), "beit-224": (BEIT_SIZE, 28), "beit-ft": (BEIT_SIZE, 28)}
_BEIT_MIXING = {"beit": (0.1, 1.0), "beit-224": (0.8, 1.0), "beit-ft": None}


def _scales(bounds):
    """``(lo, hi)`` of a random resized crop or scale, or ``None`` for none (``None`` or 1,1, the flags' off)."""
    return tuple(bounds) if bounds and tuple(bounds) != (1.0, 1.0) else None


def p1_transforms(augment, *, mean, std, num_classes, random_erasing=0.0, erasing_mode="zero", cutmix=0.0,
                  resized_crop=None, rand_augment=0.0):
    """The (train, eval) batch transforms of a Problem 1 recipe.

    Args:
        augment: ``crop-flip`` (VGG: random crop 32 with padding 4, horizontal flip), ``beit``
            (the reference's: resize to 256, random crop 224, horizontal flip, then mixup alpha
            0.1 or cutmix alpha 1.0 with equal probability), ``beit-224`` (the same scale as
            evaluation, which resizes to 224: resize to 224, random crop 224 with padding 28 (the
            4 of 32, scaled), flip, then the BEiT paper's mixup alpha 0.8 or cutmix 1.0),
            ``beit-ft`` (the same crop and flip without mixup or cutmix, as BEiT fine-tunes its
            ImageNet-22k fine-tuned weights), or ``none``. No preset smooths the labels: the
            loss does, once, with ``--label-smoothing``, the mixed targets included.
        mean, std: the normalisation of the model.
        num_classes: for the soft targets of mixup/cutmix.
        random_erasing: the probability of :class:`RandomErasing` per image (0: none), after
            normalisation; ``erasing_mode`` what it fills the rectangle with (``zero`` or ``pixel``).
        cutmix: ``crop-flip`` only: the probability that a batch gets CutMix (alpha 1.0), last
            (0: none). The targets are then always soft rows, mixed or not.
        resized_crop: BEiT presets only: ``(lo, hi)`` of :class:`RandomResizedCrop` to 224, which
            replaces the preset's resize and crop (``None`` or ``(1, 1)``: none).
        rand_augment: BEiT presets only: the magnitude of :class:`RandAugment` after the crop and
            flip (0: none).

    ``crop-flip`` crops and flips the uint8 images and normalises them (no op needs floats
    before). The BEiT presets without ``resized_crop`` and ``rand_augment`` normalise first, as
    their bilinear resize needs floats; with either, they follow BEiT's order instead: ToFloat,
    the crop (padding with the mean, as the normalised presets pad with 0), flip, RandAugment on
    [0, 1] floats, Normalize.
    """
    if cutmix and augment != CROP_FLIP:
        raise ValueError(f"cutmix: an option of the crop-flip preset only, not of {augment!r}")
    resized_crop = _scales(resized_crop)
    if (resized_crop or rand_augment) and augment not in BEIT_PRESETS:
        raise ValueError(f"resized_crop and rand_augment: options of the BEiT presets only, not of {augment!r}")
    normalize = Normalize(mean, std)
    erase = [RandomErasing(random_erasing, mode=erasing_mode)] if random_erasing else []
    # Mixed targets are left unsmoothed (smoothing=0) whatever the preset: CrossEntropyLoss applies its
    # label_smoothing to probability targets too (t * (1 - e) + e / C), which is linear and the mix
    # convex, so smoothing the mixed rows in the loss equals timm's smoothing before mixing; doing
    # both would smooth twice.
    if augment == CROP_FLIP:
        mix = []
        if cutmix:
            mix = [MixupCutmix(num_classes, cutmix_alpha=1.0, switch_prob=1.0, smoothing=0.0, prob=cutmix)]
        train = [RandomCrop(32, padding=4), RandomFlip(), normalize, *erase, *mix]
    elif augment in BEIT_PRESETS:
        size, padding = _BEIT_GEOMETRY[augment]
        mixing = _BEIT_MIXING[augment]
        mix = [MixupCutmix(num_classes, mixup_alpha=mixing[0], cutmix_alpha=mixing[1], switch_prob=0.5,
                           smoothing=0.0)] if mixing else []
        if resized_crop or rand_augment:
            crop = ([RandomResizedCrop(BEIT_SIZE, scale=resized_crop)] if resized_crop
                    else [Resize(size), RandomCrop(BEIT_SIZE, padding=padding, fill=mean)])
            augmented = [RandAugment(rand_augment, fill=mean)] if rand_augment else []
            train = [ToFloat(), *crop, RandomFlip(), *augmented, normalize, *erase, *mix]
        else:
            train = [normalize, Resize(size), RandomCrop(BEIT_SIZE, padding=padding), RandomFlip(), *erase, *mix]
    elif augment == "none":
        train = [normalize, *erase]
    else:
        raise ValueError(f"unknown augmentation preset {augment!r}")
    return Compose(train), Compose([normalize])


P2_AUGMENTS = ("flip", "d4", "none")


def p2_transforms(augment, *, mean, std, color_jitter=0.0, scale_range=None):
    """The (train, eval) batch transforms of a Problem 2 recipe.

    Args:
        augment: ``flip`` (horizontal and vertical flips, p = 0.5 each, image and mask
            together), ``d4`` (those and a transpose, p = 0.5: each of the 8 flips and 90-degree
            rotations equally likely) or ``none``.
        mean, std: the normalisation of the model's pretrained backbone.
        color_jitter: the strength of :class:`ColorJitter` (0: none).
        scale_range: ``(lo, hi)`` of :class:`RandomScale`, first (``None`` or ``(1, 1)``: none).

    The train transform is ``[geometry (uint8)], ToFloat, [ColorJitter], Normalize`` (no ToFloat
    without ColorJitter: Normalize takes the uint8 flips). With RandomScale, the conversion and
    the scale come first and the flips run on its floats: each op keeps the random draws it has
    always had (one stream, drawn in the order of the ops), and a flip does not commute with the
    scale's random window.
    """
    normalize = Normalize(mean, std)
    jitter = [ColorJitter(color_jitter)] if color_jitter else []
    scale = [RandomScale(*_scales(scale_range))] if _scales(scale_range) else []
    if augment == "flip":
        geometry = [RandomFlip(dim=-1), RandomFlip(dim=-2)]
    elif augment == "d4":
        geometry = [RandomFlip(dim=-1), RandomFlip(dim=-2), RandomTranspose()]
    elif augment == "none":
        geometry = []
    else:
        raise ValueError(f"unknown augmentation preset {augment!r}")
    if scale:
        train = [ToFloat(), *scale, *geometry, *jitter]
    elif jitter:
        train = [*geometry, ToFloat(), *jitter]
    else:
        train = geometry
    return Compose([*train, normalize]), Compose([normalize])


def p2_inference_transform(*, mean, std):
    """Normalisation, then padding to a multiple of :data:`P2_STRIDE` (tiles of any size)."""
    return Compose([Normalize(mean, std), PadTo(P2_STRIDE)])
