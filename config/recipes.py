"""The recipes: each model's ``reference`` (the seed's, reproduced exactly; the default) and
``strong`` (ours, at the same epochs and batch: the same training compute), as values of the
flags :mod:`config.flags` declares. A recipe lists the flags it sets; every other recipe flag
takes the value its declaration calls off. :data:`PARTS` names each part of a strong recipe, and
:func:`config.flags.ablations` gives the flags that turn one off (``benchmarks/recipes.py --ablate``).

Each strong recipe starts from a published recipe *for the weights it loads* (or, from scratch,
for the same network and batch); its comment names the source row and how its learning rate was
brought to our batch: by :func:`scale_lr`, or kept where the source's own script keeps it at any batch.
"""


def scale_lr(lr, *, batch, to_batch, rule):
    """A published learning rate ``lr`` at ``batch``, brought to ``to_batch``.

    ``linear`` (SGD: Goyal et al., "Accurate, Large Minibatch SGD", 2017) multiplies it by
    ``to_batch / batch``; ``sqrt`` (Adam and AdamW: Malladi et al., "On the SDEs and Scaling Rules
    for Adaptive Gradient Algorithms", NeurIPS 2022) by the square root of that ratio.
    """
    ratio = to_batch / batch
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * ratio ** 0.5
    raise ValueError(f"unknown scaling rule {rule!r}")


RECIPES = {
    "p1": {
        "vgg13": {
            # The seed's: AdamW at a constant lr.
            "reference": dict(epochs=300, batch_size=128, opt="adamw", lr=1e-3, momentum=0.0,
                              weight_decay=0.0, sched="constant", augment="crop-flip", pretrained=False),
            # Source row: "Bag of Tricks" (He et al., CVPR 2019): SGD, Nesterov momentum 0.9, lr 0.1 at batch
            # 256 (linear rule: 0.05 at our 128), cosine decay after a linear warm-up, weight decay 5e-4 off
            # BatchNorm and biases, label smoothing 0.1; random erasing (Zhong et al., AAAI 2020) on top of
            # crop + flip, and flip TTA. Measured on the digits proxy and left out (docs/RECIPES.md): an EMA of
            # the weights (a run still improving fast lags behind it), the CIFAR VGG13-BN row's lr 0.1 at
            # batch 128 with a one-cycle 15% warm-up, TrivialAugment and CutMix.
            "strong": dict(epochs=300, batch_size=128, opt="sgd", nesterov=True,
                           lr=scale_lr(0.1, batch=256, to_batch=128, rule="linear"), momentum=0.9,
                           weight_decay=5e-4, norm_bias_decay=False, sched="cosine", warmup=0.02,
                           label_smoothing=0.1, augment="crop-flip", random_erasing=0.25, tta="flip",
                           pretrained=False),
        },
        "beit": {
            # The seed's; its mixup/cutmix targets were smoothed by 0.1, which the loss now does (once).
            "reference": dict(epochs=6, batch_size=32, opt="sgd", lr=0.003, momentum=0.0, weight_decay=0.0,
                              sched="constant", augment="beit", label_smoothing=0.1, pretrained=True),
            # Source row: BEiT's own fine-tuning of these very weights (microsoft/unilm,
            # beit/get_started_for_image_classification.md, BEiT-base from beit_base_patch16_224_pt22k_ft22k:
            # self-supervised, then fine-tuned on ImageNet-22k): run_class_finetuning.py, AdamW lr 2e-5 at an
            # effective batch of 512 (64 x 8 GPUs), 30 epochs of 2,502 steps (75,060), the first 5 a warm-up
            # from 0, cosine to 1e-6, layer decay 0.85, drop path 0.1, weight decay 1e-8, and the script's
            # defaults: label smoothing 0.1, no mixup or cutmix (those are for the self-supervised-only pt22k
            # weights), and build_transform's training augmentation: RandomResizedCrop(224, scale 0.08-1,
            # bicubic), flip, RandAugment rand-m9-mstd0.5-inc1 (no colour jitter with it), random erasing 0.25
            # filled with noise (re_mode pixel). No published row fine-tunes these weights on small images for
            # a few epochs (the paper's CIFAR-100 transfer fine-tunes its ImageNet-1k weights), so this is the row.
            # lr: kept at 2e-5. run_class_finetuning.py uses --lr as given at any batch, and its guide's answer
            # to a smaller batch is --update_freq (accumulating to 512), which in our 6 epochs would leave 263
            # steps. At batch 32 the run is 6 x 704 = 4,224 steps, warm-up 1/6 of them (theirs: 5 of 30
            # epochs), cosine to 0: the lr summed over the run is 2,112 x 2e-5 = 0.042, 1/18.5 of the source's
            # 0.78 (the square-root rule's 5e-6 gave 1/74). Flip TTA; an EMA of the weights spanning the last
            # ~5% of the steps (~210: its cap 0.998 acts only from step 9,981 on, so never in this run).
            "strong": dict(epochs=6, batch_size=32, opt="adamw", lr=2e-5, momentum=0.0,
                           weight_decay=1e-8, norm_bias_decay=False, layer_decay=0.85, drop_path=0.1, sched="cosine",
                           warmup=1 / 6, label_smoothing=0.1, augment="beit-ft", resized_crop=[0.08, 1.0],
                           rand_augment=9.0, random_erasing=0.25, erasing_mode="pixel", tta="flip",
                           ema=0.998, pretrained=True),
        },
    },
    "p2": {
        "fcn32s": {
            "reference": dict(epochs=100, batch_size=8, opt="sgd", lr=0.003, momentum=0.9, weight_decay=0.0,
                              sched="constant", loss="ce", ignore_unknown=False, augment="none",
                              pretrained=True),
            # Source row: what took FCN32s to 0.734 on this very data (AdamW 1e-4, class-weighted
            # cross-entropy, flips, rotations, colour jitter; its batch is not reported, so its lr is
            # kept, scale_lr by 1), with median-frequency class weights (Eigen & Fergus, ICCV 2015), a
            # poly schedule (Chen et al., DeepLab, TPAMI 2018), D4 augmentation and TTA. Random scaling
            # 0.75-1.5 (narrower than DeepLab's 0.5-2: FCN32s predicts at stride 32, and a tile shrunk
            # by half leaves it 8x8 cells), 3-scale TTA, an EMA spanning the last ~5% of the steps (~1,250 of
            # its 25,000: its cap 0.9996 acts only from step 49,981 on, so never in this run). The x32
            # upsampling fixed at bilinear, as FCN-32s's own (Long et al., CVPR 2015, section 4.3; lr_mult 0
            # in their voc-fcn32s net), where the seed learned it. Unknown trained on, as the seed did: the
            # course's mIoU counts a class predicted on an Unknown pixel as that class's false positive, and
            # a model that never learned Unknown predicts a class on every one (docs/RECIPES.md: on the
            # demo's tiles, 6.4% Unknown, ignoring it graded 0.9023 against 0.9540).
            "strong": dict(epochs=100, batch_size=8, opt="adamw",
                           lr=scale_lr(1e-4, batch=8, to_batch=8, rule="sqrt"), momentum=0.9, weight_decay=1e-4,
                           norm_bias_decay=False, sched="poly", warmup=0.01, loss="ce", ignore_unknown=False,
                           augment="d4", color_jitter=0.2, class_weights="median-freq", tta="d4",
                           scale_range=[0.75, 1.5], tta_scales=[0.75, 1.0, 1.25], ema=0.9996,
                           fixed_upsampling=True, pretrained=True),
        },
        "deeplabv3": {
            "reference": dict(epochs=100, batch_size=4, opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-5,
                              sched="onecycle", loss="focal", ignore_unknown=True, aux_weight=1.0, augment="flip",
                              pretrained=True),
            # Source row: torchvision's recipe that made these very COCO weights (references/segmentation:
            # deeplabv3_resnet50, SGD momentum 0.9, lr 0.02 at batch 32 (4 x 8 GPUs), weight decay 1e-4,
            # poly 0.9, cross-entropy, auxiliary loss weight 0.5 with the auxiliary head at 10x the lr).
            # lr 0.02 at 32 -> batch 4 by the linear rule of SGD: 0.0025. Cross-entropy with
            # median-frequency class weights rather than focal: its step is the recipe's (the median class
            # weighs about 1, and the mean is over the weights), where focal alpha 0.2, gamma 2 shrinks it
            # 5-50x and re-weights the classes a second time. DeepLab's own multi-scale training (random
            # scale 0.5-2.0, Chen et al. 2017) and 3-scale + D4 TTA, colour jitter 0.2, an EMA spanning the
            # last ~5% of the steps (~2,500 of the 50,000: its cap 0.9998 acts only from step 99,981 on, so
            # never in this run). ResNet-50 as the reference, so the same compute per step
            # (--backbone resnet101 is a choice: 502 against 346 GFLOPs a tile, 1.45x). The backbone's
            # BatchNorm statistics frozen at COCO's: the source normalised over 32 tiles (SyncBatchNorm,
            # 4 x 8 GPUs), ours would over 4 (Detectron's FrozenBatchNorm2d; DeepLabv3 freezes them too
            # when it fine-tunes with a small batch). Unknown trained on where the source ignores VOC's void:
            # VOC's mIoU ignores void pixels, the course's counts a class predicted on Unknown as a false
            # positive (as fcn32s strong).
            "strong": dict(epochs=100, batch_size=4, opt="sgd",
                           lr=scale_lr(0.02, batch=32, to_batch=4, rule="linear"), momentum=0.9, weight_decay=1e-4,
                           norm_bias_decay=False, sched="poly", warmup=0.01, loss="ce", ignore_unknown=False,
                           aux_weight=0.5, aux_lr_scale=10.0, augment="d4", color_jitter=0.2,
                           class_weights="median-freq", tta="d4", scale_range=[0.5, 2.0], tta_scales=[0.75, 1.0, 1.25],
                           ema=0.9998, backbone="resnet50", freeze_bn=True, pretrained=True),
        },
        "lraspp": {
            # Not in the seed's report: torchvision's reference recipe for this model (SGD 0.01,
            # momentum 0.9, weight decay 1e-6, ImageNet backbone, void pixels ignored, a schedule that
            # decays to zero: cosine for its polynomial one), at this homework's 100 epochs and batch 8.
            "reference": dict(epochs=100, batch_size=8, opt="sgd", lr=0.01, momentum=0.9,
                              weight_decay=1e-6, sched="cosine", loss="ce", ignore_unknown=True,
                              augment="flip", pretrained=True),
            # Source row: torchvision's recipe for lraspp_mobilenet_v3_large (lr 0.01 at batch 32, 4 x 8
            # GPUs, weight decay 1e-6, poly 0.9): lr 0.01 at 32 -> batch 8 by the linear rule of SGD,
            # 0.0025. The segmenters' strong parts: D4 augmentation and TTA, random scale 0.5-2.0 (that
            # recipe's) and 3-scale TTA, colour jitter, median-frequency class weights, norms and biases
            # undecayed, an EMA spanning the last ~5% of the steps (~1,250 of the 25,000; its cap 0.9996 acts
            # only from step 49,981 on), Unknown trained on (as deeplabv3 strong).
            "strong": dict(epochs=100, batch_size=8, opt="sgd",
                           lr=scale_lr(0.01, batch=32, to_batch=8, rule="linear"), momentum=0.9,
                           weight_decay=1e-6, norm_bias_decay=False, sched="poly", warmup=0.01, loss="ce",
                           ignore_unknown=False, augment="d4", color_jitter=0.2,
                           class_weights="median-freq", tta="d4", scale_range=[0.5, 2.0], tta_scales=[0.75, 1.0, 1.25],
                           ema=0.9996, pretrained=True),
        },
    },
}
RECIPE_NAMES = ("reference", "strong")  # the first is the default

# The parts of each strong recipe, for --ablate: each turns the flags it lists back to the reference
# recipe's values. Every flag where strong and reference differ belongs to exactly one part.
PARTS = {
    "p1": {
        "vgg13": {"sgd-cosine": ("opt", "lr", "momentum", "weight_decay", "sched"), "nesterov": ("nesterov",),
                  "warmup": ("warmup",), "norm-bias-decay": ("norm_bias_decay",),
                  "label-smoothing": ("label_smoothing",), "random-erasing": ("random_erasing",),
                  "tta": ("tta",)},
        "beit": {"adamw-cosine": ("opt", "lr", "weight_decay", "sched", "warmup", "norm_bias_decay"),
                 "layer-decay": ("layer_decay",), "drop-path": ("drop_path",),
                 "random-erasing": ("random_erasing", "erasing_mode"), "no-mixup": ("augment",),
                 "resized-crop": ("resized_crop",), "rand-augment": ("rand_augment",), "ema": ("ema",),
                 "tta": ("tta",)},
    },
    "p2": {
        "fcn32s": {"adamw-poly": ("opt", "lr", "weight_decay", "sched", "warmup", "norm_bias_decay"),
                   "class-weights": ("class_weights",), "d4": ("augment",),
                   "color-jitter": ("color_jitter",), "scale-range": ("scale_range",), "ema": ("ema",),
                   "tta": ("tta",), "tta-scales": ("tta_scales",), "fixed-upsampling": ("fixed_upsampling",)},
        "deeplabv3": {"sgd-poly": ("lr", "weight_decay", "sched", "warmup", "norm_bias_decay"),
                      "ce-class-weights": ("loss", "class_weights"), "aux-head": ("aux_weight", "aux_lr_scale"),
                      "d4": ("augment",), "color-jitter": ("color_jitter",), "scale-range": ("scale_range",),
                      "ema": ("ema",), "tta": ("tta",), "tta-scales": ("tta_scales",), "freeze-bn": ("freeze_bn",),
                      "unknown-trained": ("ignore_unknown",)},
        "lraspp": {"sgd-poly": ("lr", "sched", "warmup", "norm_bias_decay"), "class-weights": ("class_weights",),
                   "d4": ("augment",), "color-jitter": ("color_jitter",), "scale-range": ("scale_range",),
                   "ema": ("ema",), "tta": ("tta",), "tta-scales": ("tta_scales",),
                   "unknown-trained": ("ignore_unknown",)},
    },
}

# Parts tried on a strong recipe and left out of it (docs/RECIPES.md gives the measurement): --ablate
# also runs the strong recipe with each of them, as "strong with <part>".
CANDIDATES = {
    "p1": {"vgg13": {"ema": ["--ema", "0.9998"], "one-cycle-0.1": ["--lr", "0.1", "--warmup", "0.15"],
                     "cutmix": ["--cutmix", "0.5"]}},
    "p2": {},
}
