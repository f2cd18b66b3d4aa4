"""Augmentation presets of the recipes, as batched transforms (train, eval), and inference's."""
from datasets.transforms import Compose, MixupCutmix, Normalize, PadTo, RandomCrop, RandomFlip, Resize

P2_STRIDE = 32  # the segmenters' output stride (or a multiple of theirs): inputs are padded to it

P1_AUGMENTS = ("crop-flip", "beit", "none")


def p1_transforms(augment, *, mean, std, num_classes):
    """The (train, eval) batch transforms of a Problem 1 recipe.

    Args:
        augment: ``crop-flip`` (VGG: random crop 32 with padding 4, horizontal flip), ``beit``
            (resize to 256, random crop 224, horizontal flip, then mixup alpha 0.1 or cutmix
            alpha 1.0 with equal probability and label smoothing 0.1), or ``none``.
        mean, std: the normalisation of the model.
        num_classes: for the soft targets of mixup/cutmix.
    """
    normalize = Normalize(mean, std)
    if augment == "crop-flip":
        train = Compose([RandomCrop(32, padding=4), RandomFlip(), normalize])
    elif augment == "beit":
        train = Compose([normalize, Resize(256), RandomCrop(224), RandomFlip(),
                         MixupCutmix(num_classes, mixup_alpha=0.1, cutmix_alpha=1.0,
                                     switch_prob=0.5, smoothing=0.1)])
    elif augment == "none":
        train = Compose([normalize])
    else:
        raise ValueError(f"unknown augmentation preset {augment!r}")
    return train, Compose([normalize])


P2_AUGMENTS = ("flip", "none")


def p2_transforms(augment, *, mean, std):
    """The (train, eval) batch transforms of a Problem 2 recipe.

    Args:
        augment: ``flip`` (horizontal and vertical flips, p = 0.5 each, image and mask together)
            or ``none``.
        mean, std: the normalisation of the model's pretrained backbone.
    """
    normalize = Normalize(mean, std)
    if augment == "flip":
        train = Compose([RandomFlip(dim=-1), RandomFlip(dim=-2), normalize])
    elif augment == "none":
        train = Compose([normalize])
    else:
        raise ValueError(f"unknown augmentation preset {augment!r}")
    return train, Compose([normalize])


def p2_inference_transform(*, mean, std):
    """Normalisation, then padding to a multiple of :data:`P2_STRIDE` (tiles of any size)."""
    return Compose([Normalize(mean, std), PadTo(P2_STRIDE)])
