"""The training recipes: the one table of what each model trains with by default.

``RECIPES[problem][model]["reference"]`` reproduces the seed's report (the default);
``RECIPES[problem][model]["strong"]`` is ours, at the same epochs and batch (the same training
compute), each of its parts a flag of its own. ``DEFAULTS[problem]`` holds the flags that do not
depend on the model. A training run fills every flag the user left out from the resumed checkpoint
first, then from these tables (:mod:`utils.setup`). :func:`describe` renders them into ``--help``.
"""
from utils.args import REPO

# What the reference recipes leave as they were: the parts of the strong recipes that are off.
_PLAIN = dict(nesterov=False, warmup=0.0, norm_bias_decay=True, label_smoothing=0.0, random_erasing=0.0,
              layer_decay=1.0, drop_path=0.0, tta="none")
_PLAIN_P2 = dict(nesterov=False, warmup=0.0, norm_bias_decay=True, color_jitter=0.0, class_weights="none",
                 backbone="resnet50", tta="none")

RECIPES = {
    "p1": {
        "vgg13": {
            # The seed's: AdamW at a constant lr.
            "reference": dict(_PLAIN, epochs=300, batch_size=128, opt="adamw", lr=1e-3, momentum=0.0,
                              weight_decay=0.0, sched="constant", augment="crop-flip", pretrained=False),
            # CIFAR practice for VGG/ResNet from scratch (He et al. 2016; "Bag of Tricks", He et
            # al. CVPR 2019): SGD + Nesterov at a peak lr after a linear warm-up, cosine decay,
            # weight decay 5e-4 kept off BatchNorm and biases, label smoothing 0.1; random erasing
            # (Zhong et al. AAAI 2020) on top of crop+flip; flip TTA at evaluation.
            "strong": dict(_PLAIN, epochs=300, batch_size=128, opt="sgd", nesterov=True, lr=0.05, momentum=0.9,
                           weight_decay=5e-4, norm_bias_decay=False, sched="cosine", warmup=0.02,
                           label_smoothing=0.1, augment="crop-flip", random_erasing=0.25, tta="flip",
                           pretrained=False),
        },
        "beit": {
            "reference": dict(_PLAIN, epochs=6, batch_size=32, opt="sgd", lr=0.003, momentum=0.0, weight_decay=0.0,
                              sched="constant", augment="beit", pretrained=True),
            # The BEiT paper's fine-tuning (Bao et al. ICLR 2022, appendix: AdamW, weight decay
            # 0.05, layer-wise lr decay 0.65, drop path 0.1, warm-up then cosine, mixup 0.8 /
            # cutmix 1.0 with smoothing 0.1), its lr 4e-3 at batch 1024 scaled to batch 32, and
            # training at the scale it evaluates at (resize to 224, crop with padding).
            "strong": dict(_PLAIN, epochs=6, batch_size=32, opt="adamw", lr=2e-4, momentum=0.0, weight_decay=0.05,
                           norm_bias_decay=False, layer_decay=0.65, drop_path=0.1, sched="cosine", warmup=0.1,
                           augment="beit-224", pretrained=True),
        },
    },
    "p2": {
        "fcn32s": {
            "reference": dict(_PLAIN_P2, epochs=100, batch_size=8, opt="sgd", lr=0.003, momentum=0.9, weight_decay=0.0,
                              sched="constant", loss="ce", ignore_unknown=False, aux_weight=0.0, augment="none",
                              pretrained=True),
            # What took FCN32s to 0.734 on this data (AdamW 1e-4, class-weighted cross-entropy,
            # flips, rotations, colour jitter), with median-frequency class weights (Eigen &
            # Fergus, ICCV 2015), a poly schedule (Chen et al., DeepLab, TPAMI 2018) and D4 TTA.
            "strong": dict(_PLAIN_P2, epochs=100, batch_size=8, opt="adamw", lr=1e-4, momentum=0.9, weight_decay=1e-4,
                           norm_bias_decay=False, sched="poly", warmup=0.01, loss="ce", ignore_unknown=True,
                           aux_weight=0.0, augment="d4", color_jitter=0.2, class_weights="median-freq", tta="d4",
                           pretrained=True),
        },
        "deeplabv3": {
            "reference": dict(_PLAIN_P2, epochs=100, batch_size=4, opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-5,
                              sched="onecycle", loss="focal", ignore_unknown=True, aux_weight=1.0, augment="flip",
                              pretrained=True),
            # DeepLab's own training (Chen et al. 2017: SGD momentum 0.9, poly lr from 0.01,
            # weight decay 1e-4), with the reference's focal loss, median-frequency class weights,
            # D4 augmentation and TTA, mild colour jitter. ResNet-50 as the reference: the same
            # compute per step (--backbone resnet101 is a choice, about 1.6x the compute).
            "strong": dict(_PLAIN_P2, epochs=100, batch_size=4, opt="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4,
                           norm_bias_decay=False, sched="poly", warmup=0.01, loss="focal", ignore_unknown=True,
                           aux_weight=0.4, augment="d4", color_jitter=0.2, class_weights="median-freq", tta="d4",
                           backbone="resnet50", pretrained=True),
        },
        "lraspp": {
            # Not in the seed's report: torchvision's reference recipe for this model (SGD 0.01,
            # momentum 0.9, weight decay 1e-6, ImageNet backbone, void pixels ignored, a schedule
            # that decays to zero: cosine for its polynomial one), at this homework's 100 epochs
            # and batch 8.
            "reference": dict(_PLAIN_P2, epochs=100, batch_size=8, opt="sgd", lr=0.01, momentum=0.9,
                              weight_decay=1e-6, sched="cosine", loss="ce", ignore_unknown=True, aux_weight=0.0,
                              augment="flip", pretrained=True),
            # The segmenters' strong parts: poly after a warm-up, D4 augmentation and TTA, colour
            # jitter, median-frequency class weights, norms and biases undecayed.
            "strong": dict(_PLAIN_P2, epochs=100, batch_size=8, opt="sgd", lr=0.01, momentum=0.9,
                           weight_decay=1e-6, norm_bias_decay=False, sched="poly", warmup=0.01, loss="ce",
                           ignore_unknown=True, aux_weight=0.0, augment="d4", color_jitter=0.2,
                           class_weights="median-freq", tta="d4", pretrained=True),
        },
    },
}
RECIPE_NAMES = ("reference", "strong")

DEFAULTS = {
    "p1": dict(model="vgg13", recipe="reference", train_dir=REPO / "hw1_data" / "p1_data" / "train_50",
               val_dir=REPO / "hw1_data" / "p1_data" / "val_50", global_pool="avg", dropout=0.5,
               eval_batch_size=256, seed=0),
    "p2": dict(model="fcn32s", recipe="reference", train_dir=REPO / "hw1_data" / "p2_data" / "train",
               val_dir=REPO / "hw1_data" / "p2_data" / "validation", focal_alpha=0.2, focal_gamma=2.0,
               tile_size=512, eval_batch_size=8, dropout=0.5, seed=0),
}


def describe(problem):
    """The recipes of ``problem`` as lines for ``--help``: each reference recipe in full, and what
    each strong recipe changes."""
    lines = ["recipes (--recipe; what flags marked 'recipe' default to):"]
    for model, recipes in RECIPES[problem].items():
        reference = recipes["reference"]
        plain = _PLAIN if problem == "p1" else _PLAIN_P2
        lines.append(f"  {model} reference: " + _flags({k: v for k, v in reference.items() if k not in plain}))
        lines.append(f"  {model} strong:    " + _flags({k: v for k, v in recipes["strong"].items()
                                                         if reference.get(k) != v}))
    return "\n".join(lines)


def _flags(recipe):
    return ", ".join(f"{k.replace('_', '-')} {_show(v)}" for k, v in recipe.items())


def _show(value):
    return {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value
