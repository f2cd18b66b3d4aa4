"""The training recipes: the one table of what each model trains with by default.

``RECIPES[problem][model]`` is the reference recipe of the seed's report (the README's recipe
section gives the numbers it reached); ``DEFAULTS[problem]`` holds the flags that do not depend
on the model. A training run fills every flag the user left out from the resumed checkpoint
first, then from these tables (:mod:`utils.setup`). :func:`describe` renders them into ``--help``.
"""
from utils.args import REPO

RECIPES = {
    "p1": {
        "vgg13": dict(epochs=300, batch_size=128, opt="adamw", lr=1e-3, momentum=0.0, weight_decay=0.0,
                      sched="constant", augment="crop-flip", pretrained=False),
        "beit": dict(epochs=6, batch_size=32, opt="sgd", lr=0.003, momentum=0.0, weight_decay=0.0,
                     sched="constant", augment="beit", pretrained=True),
    },
    "p2": {
        "fcn32s": dict(epochs=100, batch_size=8, opt="sgd", lr=0.003, momentum=0.9, weight_decay=0.0,
                       sched="constant", loss="ce", ignore_unknown=False, aux_weight=0.0, augment="none",
                       pretrained=True),
        "deeplabv3": dict(epochs=100, batch_size=4, opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-5,
                          sched="onecycle", loss="focal", ignore_unknown=True, aux_weight=1.0, augment="flip",
                          pretrained=True),
        # Not in the seed's report: torchvision's reference recipe for this model (SGD 0.01, momentum
        # 0.9, weight decay 1e-6, ImageNet backbone, void pixels ignored, a schedule that decays to
        # zero: cosine for its polynomial one), at this homework's 100 epochs and batch 8.
        "lraspp": dict(epochs=100, batch_size=8, opt="sgd", lr=0.01, momentum=0.9, weight_decay=1e-6,
                       sched="cosine", loss="ce", ignore_unknown=True, aux_weight=0.0, augment="flip",
                       pretrained=True),
    },
}

DEFAULTS = {
    "p1": dict(model="vgg13", train_dir=REPO / "hw1_data" / "p1_data" / "train_50",
               val_dir=REPO / "hw1_data" / "p1_data" / "val_50", global_pool="avg", dropout=0.5,
               eval_batch_size=256, seed=0),
    "p2": dict(model="fcn32s", train_dir=REPO / "hw1_data" / "p2_data" / "train",
               val_dir=REPO / "hw1_data" / "p2_data" / "validation", focal_alpha=0.2, focal_gamma=2.0,
               tile_size=512, eval_batch_size=8, dropout=0.5, seed=0),
}


def describe(problem):
    """The reference recipes of ``problem`` as lines for ``--help``."""
    lines = ["reference recipes (what flags marked 'recipe' default to):"]
    for model, recipe in RECIPES[problem].items():
        flags = ", ".join(f"{k.replace('_', '-')} {_show(v)}" for k, v in recipe.items())
        lines.append(f"  {model}: {flags}")
    return "\n".join(lines)


def _show(value):
    return {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value
