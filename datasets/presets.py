"""Augmentation presets of the recipes, as batched transforms (train, eval), and inference's.

Each preset follows the convention of :mod:`datasets.transforms`: geometry on the uint8 images,
at most one conversion to [0, 1] floats (:class:`ToFloat`, right before the first op that needs
floats), the colour ops on floats, then :class:`Normalize`.
"""
from datasets.transforms import (ColorJitter, Compose, MixupCutmix, Normalize, PadTo, RandomCrop, RandomErasing,
                                 RandomFlip, RandomScale, RandomTranspose, Resize, ToFloat)

P2_STRIDE = 32  # the segmenters' output stride (or a multiple of theirs): inputs are padded to it

P1_AUGMENTS = ("crop-flip", "beit", "beit-224", "beit-ft", "none")


def p1_transforms(augment, *, mean, std, num_classes, random_erasing=0.0, cutmix=0.0):
    """The (train, eval) batch transforms of a Problem 1 recipe.

    Args:
        augment: ``crop-flip`` (VGG: random crop 32 with padding 4, horizontal flip), ``beit``
            (the reference's: resize to 256, random crop 224, horizontal flip, then mixup alpha
            0.1 or cutmix alpha 1.0 with equal probability), ``beit-224`` (the same scale as
            evaluation, which resizes to 224: resize to 224, random crop 224 with padding 28 (the
            4 of 32, scaled), flip, then the BEiT paper's mixup alpha 0.8 or cutmix 1.0),
            ``beit-ft`` (the same crop and flip without mixup or cutmix, as BEiT fine-tunes its
            ImageNet-22k fine-tuned weights), or ``none``. No preset smooths the labels: the
            loss does, once, with ``--label-smoothing``, the mixed targets included. ``crop-flip``
            crops and flips the uint8 images and normalises them (no op needs floats before);
            the BEiT presets normalise first, as their bilinear resize needs floats.
        mean, std: the normalisation of the model.
        num_classes: for the soft targets of mixup/cutmix.
        random_erasing: the probability of :class:`RandomErasing` per image (0: none).
        cutmix: ``crop-flip`` only: the probability that a batch gets CutMix (alpha 1.0), last
            (0: none). The targets are then always soft rows, mixed or not.
    """
    if cutmix and augment != "crop-flip":
        raise ValueError(f"cutmix: an option of the crop-flip preset only, not of {augment!r}")
    normalize = Normalize(mean, std)
    erase = [RandomErasing(random_erasing)] if random_erasing else []
    # Mixed targets are left unsmoothed (smoothing=0) whatever the preset: CrossEntropyLoss applies its
    # label_smoothing to probability targets too (t * (1 - e) + e / C), which is linear and the mix
    # convex, so smoothing the mixed rows in the loss equals timm's smoothing before mixing; doing
    # both would smooth twice.
    if augment == "crop-flip":
        mix = []
        if cutmix:
            mix = [MixupCutmix(num_classes, cutmix_alpha=1.0, switch_prob=1.0, smoothing=0.0, prob=cutmix)]
        train = Compose([RandomCrop(32, padding=4), RandomFlip(), normalize, *erase, *mix])
    elif augment == "beit":
        train = Compose([normalize, Resize(256), RandomCrop(224), RandomFlip(), *erase,
                         MixupCutmix(num_classes, mixup_alpha=0.1, cutmix_alpha=1.0,
                                     switch_prob=0.5, smoothing=0.0)])
    elif augment == "beit-224":
        train = Compose([normalize, Resize(224), RandomCrop(224, padding=28), RandomFlip(), *erase,
                         MixupCutmix(num_classes, mixup_alpha=0.8, cutmix_alpha=1.0,
                                     switch_prob=0.5, smoothing=0.0)])
    elif augment == "beit-ft":
        train = Compose([normalize, Resize(224), RandomCrop(224, padding=28), RandomFlip(), *erase])
    elif augment == "none":
        train = Compose([normalize, *erase])
    else:
        raise ValueError(f"unknown augmentation preset {augment!r}")
    return train, Compose([normalize])


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
    scale = [RandomScale(*scale_range)] if scale_range and tuple(scale_range) != (1.0, 1.0) else []
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
