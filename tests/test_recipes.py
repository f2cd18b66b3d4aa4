"""The recipes: --recipe reference is the seed's behaviour, --recipe strong trains every model, and
each part of the strong recipes does what it says (exact values on hand-made inputs)."""
import argparse
import json
import math
import re

import pytest
import timm
import torch
from torch import nn

from datasets.loader import TensorBatches, count_batches
from datasets.p1 import MEAN as P1_MEAN, NUM_CLASSES as P1_CLASSES, STD as P1_STD, load_folder
from datasets.p2 import class_weights
from datasets.presets import p1_transforms, p2_transforms
from datasets.transforms import ColorJitter, RandomErasing, RandomScale, ToFloat
from models import get_model
from models.beit import BEiT
from inference import forward, tta_views
from training.losses import SegmentationLoss, focal_loss
from training.optim import POLY_POWER, Updater, WeightAverage, build_optimizer, build_scheduler, param_groups
from config.flags import ablations, defaults
from config.recipes import PARTS, RECIPES
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from tests.conftest import CPU_FP32
from utils.runtime import EpochRNG, seed_everything
import p1_inference
import p1_train
import p2_inference
import p2_train


def p1_flags(p1_data, out, *extra):
    train, val = p1_data
    return ["--train-dir", str(train), "--val-dir", str(val), "--output-dir", str(out), "--batch-size", "16",
            *CPU_FP32, "--no-progress", *map(str, extra)]


# --- reference: the seed's behaviour ---------------------------------------------------------

def seed_loop(train_dir, epochs, batch_size, seed=0):
    """The seed's VGG13 training (commit d719ad8, before recipes existed), frozen as its plain steps:
    AdamW at lr 1e-3 without weight decay at a constant lr, cross-entropy, crop + flip, the batches of
    (seed, epoch). It shares only the data pieces with p1_train.py (decoding, batch order,
    augmentation: their own tests pin them), not setup, recipes, optimiser, schedule or loop."""
    cpu = torch.device("cpu")
    data = load_folder(train_dir, labeled=True)
    seed_everything(seed)
    model = get_model("vgg13", num_classes=P1_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    transform, _ = p1_transforms("crop-flip", mean=P1_MEAN, std=P1_STD, num_classes=P1_CLASSES)
    losses = []
    for epoch in range(1, epochs + 1):
        rng = EpochRNG(seed, epoch, cpu)
        model.train()
        for x, y in TensorBatches(data.images, data.labels, batch_size, generator=rng.cpu, drop_small=True,
                                  device=cpu):
            x, y = transform(x, y, rng)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return model.state_dict(), losses


@pytest.mark.numeric
def test_reference_is_the_default_and_trains_as_the_seeds_code(p1_data, tmp_path):
    """The default recipe is the reference, and it computes what the seed's plain loop computes on this
    machine: the same weights bit for bit. No captured number: losses and weights differ between CPU
    instruction sets and thread counts (1% after two epochs between AVX2 and the default capability),
    so both sides are computed here, by the same kernels in the same order."""
    p1_train.main(p1_train.get_args_parser().parse_args(p1_flags(p1_data, tmp_path / "a", "--epochs", "2")))
    ckpt = load_checkpoint(tmp_path / "a" / "last.pth")
    assert ckpt["args"]["recipe"] == "reference"
    weights, losses = seed_loop(p1_data[0], epochs=2, batch_size=16)
    for name, tensor in weights.items():
        assert torch.equal(ckpt["model"][name], tensor), name
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    # The logged epoch loss is the mean over the epoch's samples (equal batches: the mean of the steps'),
    # summed in another order: equal to float rounding.
    steps = len(losses) // 2
    assert [r["train_loss"] for r in lines] == pytest.approx(
        [sum(losses[:steps]) / steps, sum(losses[steps:]) / steps], rel=1e-6)


def test_reference_recipes_build_what_the_seed_built():
    model = get_model("vgg13", num_classes=50)
    args = argparse.Namespace(**RECIPES["p1"]["vgg13"]["reference"])
    updater = Updater.from_flags(args, model, steps_per_epoch=10, device=torch.device("cpu"), amp_dtype=None)
    assert len(updater.optimizer.param_groups) == 1 and type(updater.optimizer).__name__ == "AdamW"
    assert type(updater.scheduler).__name__ == "ConstantLR"
    train, _ = p1_transforms("crop-flip", mean=(0.5,) * 3, std=(0.2,) * 3, num_classes=50)
    assert repr(train) == ("Compose(RandomCrop(32, padding=4), RandomFlip(p=0.5, dim=-1), "
                           "Normalize(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)))")
    train, _ = p2_transforms("flip", mean=(0.5,) * 3, std=(0.2,) * 3)
    assert repr(train) == ("Compose(RandomFlip(p=0.5, dim=-1), RandomFlip(p=0.5, dim=-2), "
                           "Normalize(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)))")
    for problem, models in RECIPES.items():
        for model in models:
            reference, strong = defaults(problem, model, "reference"), defaults(problem, model, "strong")
            assert reference["tta"] == "none" and reference["warmup"] == 0.0 and reference["ema"] == 0.0
            # Equal compute: the strong recipe trains as many epochs, at the same batch.
            assert (strong["epochs"], strong["batch_size"]) == (reference["epochs"], reference["batch_size"])


# --- strong: every model trains from random weights offline, and inference follows ----------

def test_strong_vgg13_trains_resumes_and_grades_with_its_tta(p1_data, tmp_path):
    out = tmp_path / "run"
    p1_train.main(p1_train.get_args_parser().parse_args(p1_flags(p1_data, out, "--epochs", "1", "--recipe", "strong")))
    saved = json.loads((out / "args.json").read_text())
    assert (saved["recipe"], saved["opt"], saved["nesterov"], saved["tta"]) == ("strong", "sgd", True, "flip")
    # Resume keeps the recipe; a flag given overrides it.
    p1_train.main(p1_train.get_args_parser().parse_args(["--resume", str(out / "last.pth"), "--epochs", "2"]))
    assert load_checkpoint(out / "last.pth")["args"]["recipe"] == "strong"
    result = p1_inference.main(p1_inference.get_args_parser().parse_args(
        ["--checkpoint", str(out / "best.pth"), *CPU_FP32, "--no-progress", str(p1_data[1]),
         str(tmp_path / "p.csv")]))
    assert result["tta"] == "flip"  # what the run validated with
    result = p1_inference.main(p1_inference.get_args_parser().parse_args(
        ["--checkpoint", str(out / "best.pth"), *CPU_FP32, "--no-progress", "--no-tta", str(p1_data[1]),
         str(tmp_path / "p.csv")]))
    assert result["tta"] == "none"


def test_strong_beit_trains_one_step(p1_data, tmp_path):
    small = tmp_path / "train"
    small.mkdir()
    for p in sorted(p1_data[0].iterdir())[:2]:
        (small / p.name).write_bytes(p.read_bytes())
    result = p1_train.main(p1_train.get_args_parser().parse_args([
        "--model", "beit", "--recipe", "strong", "--no-pretrained", "--train-dir", str(small), "--val-dir", str(small),
        "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", *CPU_FP32,
        "--no-progress"]))
    assert math.isfinite(result["last"]["train_loss"])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["args"]["layer_decay"] == 0.85 and ckpt["args"]["augment"] == "beit-ft"
    assert "drop_path" not in ckpt["model_kwargs"]  # training alone: inference rebuilds without it
    assert len(ckpt["optimizer"]["param_groups"]) == 2 * 14  # 14 depths, decayed or not


@pytest.mark.parametrize("model", ["lraspp", "deeplabv3"])
def test_strong_segmenters_train_and_record_their_class_weights(model, p2_data, tmp_path, capsys):
    # Validation with the recipe's TTA (8 views at 3 scales) on one tile. fcn32s's strong recipe takes the
    # same path (its fixed upsampling: tests/test_models.py); its 2 GB of checkpoints would be most of the time.
    val = tmp_path / "val"
    val.mkdir()
    for name in ("0100_sat.jpg", "0100_mask.png"):
        (val / name).write_bytes((p2_data[1] / name).read_bytes())
    result = p2_train.main(p2_train.get_args_parser().parse_args([
        "--model", model, "--recipe", "strong", "--no-pretrained", "--train-dir", str(p2_data[0]),
        "--val-dir", str(val), "--output-dir", str(tmp_path / "run"), "--tile-size", "64", "--epochs", "1",
        "--batch-size", "4", *CPU_FP32, "--no-progress"]))
    assert math.isfinite(result["last"]["train_loss"])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["args"]["tta"] == "d4" and ckpt["args"]["augment"] == "d4" and ckpt["args"]["sched"] == "poly"
    assert ckpt["args"]["tta_scales"] == [0.75, 1.0, 1.25] and ckpt["args"]["scale_range"][0] < 1
    assert not ckpt["args"]["ignore_unknown"]  # Unknown trained on: the course's mIoU scores it
    assert ckpt["ema"] is not None and load_checkpoint(tmp_path / "run" / "best.pth")["weights"] == "ema"
    assert len(ckpt["class_weights"]) == 7 and "class weights urban" in capsys.readouterr().out
    if model == "deeplabv3":
        # --freeze-bn keeps pretrained statistics: from random weights there are none, and BatchNorm trains.
        assert ckpt["args"]["freeze_bn"] and ckpt["model"]["net.backbone.bn1.running_mean"].abs().sum() > 0
    if model == "deeplabv3":  # grading follows the run's TTA, scales included; the flags override them
        argv = ["--checkpoint", str(tmp_path / "run" / "best.pth"), *CPU_FP32, "--no-progress", str(val)]
        result = p2_inference.main(p2_inference.get_args_parser().parse_args([*argv, str(tmp_path / "masks")]))
        assert (result["tta"], result["tta_scales"]) == ("d4", [0.75, 1.0, 1.25]) and result["masks"] == 1
        result = p2_inference.main(p2_inference.get_args_parser().parse_args(
            [*argv, "--tta", "none", "--tta-scales", "1", str(tmp_path / "masks1")]))  # a positional after it
        assert (result["tta"], result["tta_scales"]) == ("none", [1.0])


# --- the parts, exactly --------------------------------------------------------------------

def test_the_d4_views_undo_to_the_identity_and_make_predictions_invariant():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = tta_views("d4")
    seen = {tuple(view(x).flatten().tolist()) for view, _ in views}
    assert len(views) == 8 and len(seen) == 8  # 8 distinct symmetries of the square
    for view, undo in views:
        assert torch.equal(undo(view(x)), x)

    class Corner(nn.Module):  # neither rotation- nor mirror-invariant
        def forward(self, x):
            return {"out": x * torch.linspace(0, 1, x.shape[-1]) + x.roll(1, -2)}

    model = Corner()
    out = forward(model, x, "d4")["out"]
    expected = (sum(undo(model(view(x))["out"]).softmax(1) for view, undo in views) / 8).log()
    assert torch.allclose(out, expected)
    # Equivariant: the prediction of a rotated tile is the rotated prediction (the views are summed in
    # another order, so up to float32 rounding of log-probabilities near 0).
    assert torch.allclose(forward(model, x.rot90(1, (-2, -1)), "d4")["out"], out.rot90(1, (-2, -1)), atol=1e-6)
    assert torch.allclose(forward(model, x.flip(-2), "d4")["out"], out.flip(-2), atol=1e-6)


def test_median_frequency_class_weights_of_hand_made_masks():
    # Tile A (20 pixels): 8 urban, 4 agriculture, 2 rangeland, 2 forest, 4 Unknown; tile B: 10 urban, 10 water.
    a = torch.tensor([0] * 8 + [1] * 4 + [2] * 2 + [3] * 2 + [6] * 4, dtype=torch.uint8).view(4, 5)
    b = torch.tensor([0] * 10 + [4] * 10, dtype=torch.uint8).view(4, 5)
    # Each class over the pixels of the tiles holding it (Eigen & Fergus): urban 18/40, agriculture 4/20,
    # rangeland and forest 2/20, water 10/20 (not 10/40: it is in one tile only); barren absent. Median 0.2.
    expected = [0.2 / 0.45, 1.0, 2.0, 2.0, 0.4, 1.0, 1.0]
    for chunk in (1, 2):
        assert class_weights(torch.stack([a, b]), chunk=chunk) == pytest.approx(expected)


def test_class_weighted_losses():
    logits = torch.randn(2, 7, 3, 3, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 7, (2, 3, 3), generator=torch.Generator().manual_seed(1))
    ones = torch.ones(7)
    assert focal_loss(logits, target, alpha=0.2, gamma=2, weight=ones) == pytest.approx(
        focal_loss(logits, target, alpha=0.2, gamma=2).item())
    # Weight 0 on every class but one: the mean over that class's pixels alone.
    only3 = torch.zeros(7)
    only3[3] = 2.0
    pixels = target == 3
    per_pixel = nn.functional.cross_entropy(logits, target, reduction="none")
    assert focal_loss(logits, target, alpha=1.0, gamma=0.0, weight=only3) == pytest.approx(
        per_pixel[pixels].mean().item(), rel=1e-6)
    loss = SegmentationLoss("ce", ignore_index=6, aux_weight=0.0, class_weights=only3.tolist())
    assert loss({"out": logits}, target) == pytest.approx(per_pixel[pixels].mean().item(), rel=1e-6)


# The groups and schedules worked out by hand (the code before they were timm's and torch's): the
# references they must match.

def depth_of(name, num_layers):
    """BEiT's depth rule: 0 the embeddings, ``i + 1`` block ``i``, ``num_layers + 1`` the final norm
    and the head."""
    parts = name.split(".")
    if parts[1] in ("cls_token", "mask_token", "pos_embed", "patch_embed", "rel_pos_bias"):
        return 0
    if parts[1] == "blocks":
        return int(parts[2]) + 1
    return num_layers + 1


def hand_made_groups(net, *, weight_decay, norm_bias_decay=True, layer_decay=1.0, aux_lr_scale=1.0):
    """The parameter groups by BEiT's rules (depth by :func:`depth_of`), one per (depth, auxiliary
    head, undecayed)."""
    skip = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    num_layers = len(net.net.blocks) if layer_decay != 1.0 else 0
    groups = {}
    for name, param in net.named_parameters():
        undecayed = not norm_bias_decay and (param.ndim <= 1 or name in skip)
        depth = depth_of(name, num_layers) if layer_decay != 1.0 else 0
        scale = layer_decay ** (num_layers + 1 - depth) if layer_decay != 1.0 else 1.0
        aux = aux_lr_scale != 1.0 and net.is_aux(name)
        scale *= aux_lr_scale if aux else 1.0
        key = (depth, aux, undecayed)
        groups.setdefault(key, {"params": [], "weight_decay": 0.0 if undecayed else weight_decay,
                                "lr_scale": scale})["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def warmup_factor(name, step, *, total_steps, warmup_steps):
    """The closed form of the schedules (what they were before they were torch's)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if name == "poly":
        return max(1.0 - t, 0.0) ** POLY_POWER
    return 1.0


@pytest.fixture(scope="module")
def beit():
    """BEiT-base (86M parameters), built once for the module's tests."""
    return get_model("beit", num_classes=50, pretrained=False)


def small_beit(global_pool):
    """A 3-block timm BEiT under our wrapper: the same parameter names as BEiT-base's."""
    return BEiT(timm.create_model("beit_base_patch16_224", pretrained=False, depth=3, embed_dim=32, num_heads=2,
                                  num_classes=5, global_pool=global_pool))


def test_layer_wise_lr_decay_per_block_and_no_decay_on_norms_biases_and_tokens(beit):
    model = beit
    groups = param_groups(model, weight_decay=0.05, norm_bias_decay=False, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert by_name["net.cls_token"]["lr_scale"] == 0.5 ** 13 and by_name["net.cls_token"]["weight_decay"] == 0
    assert by_name["net.patch_embed.proj.weight"]["lr_scale"] == 0.5 ** 13
    assert by_name["net.blocks.0.attn.qkv.weight"]["lr_scale"] == 0.5 ** 12
    assert by_name["net.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert by_name["net.blocks.11.mlp.fc1.weight"]["lr_scale"] == 0.5 ** 1
    assert by_name["net.blocks.11.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["net.blocks.3.attn.relative_position_bias_table"]["weight_decay"] == 0.0
    assert by_name["net.head.weight"]["lr_scale"] == 1.0 and by_name["net.head.bias"]["weight_decay"] == 0.0
    args = argparse.Namespace(opt="adamw", lr=1e-3, weight_decay=0.05, momentum=0.0, sched="constant", epochs=1,
                              norm_bias_decay=False, layer_decay=0.5)
    updater = Updater.from_flags(args, model, steps_per_epoch=1, device=torch.device("cpu"), amp_dtype=None)
    lrs = sorted({g["lr"] for g in updater.optimizer.param_groups})
    assert lrs == pytest.approx([1e-3 * 0.5 ** k for k in range(13, -1, -1)])


@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_timms_layer_decay_gives_every_beit_parameter_beits_lr_scale_and_decay(global_pool, beit):
    # BEiT-base as the recipes build it (mean pooling: fc_norm); the final norm of token pooling on a
    # small one, where timm's own matcher would put it with the last block.
    model = beit if global_pool == "avg" else small_beit(global_pool)
    num_layers, skip = len(model.net.blocks), model.no_weight_decay()
    groups = param_groups(model, weight_decay=0.05, norm_bias_decay=False, layer_decay=0.85)
    got = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    expected = {name: (0.85 ** (num_layers + 1 - depth_of(name, num_layers)),
                       0.0 if p.ndim <= 1 or name in skip else 0.05) for name, p in model.named_parameters()}
    assert {name: got[id(p)] for name, p in model.named_parameters()} == expected
    final_norm = "net.norm.weight" if global_pool == "token" else "net.fc_norm.weight"
    assert expected[final_norm][0] == 1.0 and expected["net.cls_token"] == (0.85 ** (num_layers + 1), 0.0)


@pytest.mark.parametrize("model, flags", [
    ("vgg13", dict(weight_decay=5e-4, norm_bias_decay=False)),
    ("vgg13", dict(weight_decay=0.0, norm_bias_decay=False)),  # the strong recipe's sgd-cosine ablation
    ("deeplabv3", dict(weight_decay=1e-4, norm_bias_decay=False, aux_lr_scale=10.0)),
    ("deeplabv3", dict(weight_decay=1e-4, norm_bias_decay=True, aux_lr_scale=10.0)),
    ("beit", dict(weight_decay=0.05, norm_bias_decay=False, layer_decay=0.85)),
    ("beit", dict(weight_decay=0.0, norm_bias_decay=True, layer_decay=0.85)),
    ("beit-token", dict(weight_decay=0.05, norm_bias_decay=False, layer_decay=0.85)),
])
def test_the_groups_are_the_hand_made_ones(model, flags, request):
    if model == "beit":
        net = request.getfixturevalue("beit")
    elif model == "beit-token":
        net = small_beit("token")
    else:
        net = get_model(model, num_classes=50 if model == "vgg13" else 7, pretrained=False)

    def described(groups):
        return sorted((sorted(id(p) for p in g["params"]), g["weight_decay"], g["lr_scale"]) for g in groups)

    assert described(param_groups(net, **flags)) == described(hand_made_groups(net, **flags))


def test_a_model_without_layers_refuses_layer_decay():
    with pytest.raises(Exception, match="--layer-decay 0.5: VGG has no layers"):
        param_groups(get_model("vgg13", num_classes=5), weight_decay=0.1, layer_decay=0.5)


def test_norm_and_bias_parameters_take_no_weight_decay():
    model = get_model("vgg13", num_classes=5)
    groups = param_groups(model, weight_decay=5e-4, norm_bias_decay=False)
    decayed = {p.ndim for g in groups if g["weight_decay"] for p in g["params"]}
    undecayed = {p.ndim for g in groups if not g["weight_decay"] for p in g["params"]}
    assert decayed == {2, 4} and undecayed == {1}
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def scheduled_lrs(name, total, warmup, scales=(0.25, 1.0)):
    """Each group's lr (0.1 times its scale) at steps 0 to ``total`` of :func:`build_scheduler`."""
    params = [{"params": [nn.Parameter(torch.zeros(1))], "lr_scale": s} for s in scales]
    optimizer = build_optimizer("sgd", params, lr=0.1, weight_decay=0.0, momentum=0.0)
    scheduler = build_scheduler(name, optimizer, total_steps=total, warmup_steps=warmup)
    lrs = []
    for _ in range(total + 1):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("name, total, warmup", [("cosine", 100, 10), ("poly", 100, 10), ("cosine", 100, 0),
                                                 ("poly", 100, 0), ("constant", 100, 10), ("cosine", 5, 1),
                                                 ("poly", 6, 6), ("cosine", 3000, 60)])
def test_each_schedule_is_the_closed_form_it_replaced_at_every_step(name, total, warmup):
    lrs = scheduled_lrs(name, total, warmup)
    expected = [[0.1 * s * warmup_factor(name, step, total_steps=total, warmup_steps=warmup) for s in (0.25, 1.0)]
                for step in range(total + 1)]
    worst = max(abs(a - b) / b for got, want in zip(lrs[:total], expected) for a, b in zip(got, want))
    print(f"{name}, {total} steps, warm-up {warmup}: largest relative lr difference {worst:.2e}")
    assert worst < 1e-6
    assert lrs[total] == pytest.approx(expected[total], rel=1e-6, abs=1e-15)  # after the last step (0, or lr)


def test_warmup_then_decay_schedules():
    assert [lr for lr, _ in scheduled_lrs("cosine", 6, 2, scales=(1.0, 1.0))][:6] == pytest.approx(
        [0.05, 0.1, 0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.05 * (1 + math.cos(3 * math.pi / 4))])
    assert [lr for lr, _ in scheduled_lrs("poly", 5, 1, scales=(1.0, 1.0))][:5] == pytest.approx(
        [0.1, 0.1, 0.1 * 0.75 ** 0.9, 0.1 * 0.5 ** 0.9, 0.1 * 0.25 ** 0.9])
    model = nn.Linear(1, 1)
    args = argparse.Namespace(opt="sgd", lr=0.1, weight_decay=0.0, momentum=0.0, sched="poly", epochs=1, warmup=0.4)
    updater = Updater.from_flags(args, model, steps_per_epoch=5, device=torch.device("cpu"), amp_dtype=None)
    lrs = []
    for _ in range(5):
        lrs.append(updater.lr)
        updater.step(model(torch.ones(1, 1)).sum())
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1 * (2 / 3) ** 0.9, 0.1 * (1 / 3) ** 0.9])


def test_a_resume_with_more_epochs_lays_the_schedule_out_anew_and_one_with_the_same_loads_it():
    model = nn.Linear(2, 1)

    def updater(epochs, lr=0.1, weight_decay=0.0):
        args = argparse.Namespace(opt="sgd", lr=lr, weight_decay=weight_decay, momentum=0.9, sched="cosine",
                                  epochs=epochs, warmup=0.1)
        return Updater.from_flags(args, model, steps_per_epoch=10, device=torch.device("cpu"), amp_dtype=None)

    first = updater(2)
    for _ in range(20):
        first.step(model(torch.ones(1, 2)).sum())
    state = first.state_dict()
    same = updater(2)
    same.load_state_dict(state)
    assert same.scheduler.state_dict() == first.scheduler.state_dict() and same.lr == first.lr == 0.0
    # The schedule of the new length, at the step the run is at.
    longer = updater(4)
    longer.load_state_dict(state)
    for step in range(20, 40):
        assert longer.lr == pytest.approx(0.1 * warmup_factor("cosine", step, total_steps=40, warmup_steps=4),
                                          rel=1e-9, abs=1e-15)
        longer.step(model(torch.ones(1, 2)).sum())
    # Another --lr and --weight-decay at the same length: the schedule of the new lr, at the saved step,
    # and the new decay, where the optimiser's saved groups would keep the old ones.
    halfway = updater(4)
    for _ in range(20):
        halfway.step(model(torch.ones(1, 2)).sum())
    other = updater(4, lr=0.05, weight_decay=0.01)
    other.load_state_dict(halfway.state_dict())
    assert other.lr == pytest.approx(0.05 * warmup_factor("cosine", 20, total_steps=40, warmup_steps=4), rel=1e-9)
    assert other.optimizer.param_groups[0]["weight_decay"] == 0.01
    assert other.optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        halfway.optimizer.state_dict()["state"][0]["momentum_buffer"])

def test_d4_augmentation_moves_masks_with_their_tiles_and_draws_every_symmetry():
    tile = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(512, 3, 4, 4).contiguous()
    mask = tile[:, 0].clone()
    train, _ = p2_transforms("d4", mean=(0.0,) * 3, std=(1 / 255,) * 3)
    x, y = train(tile, mask, EpochRNG(0, 1, torch.device("cpu")))
    assert torch.equal(x[:, 0], y.float())  # normalisation here is the identity on the values
    views = {tuple(v.flatten().tolist()) for v in y}
    assert len(views) == 8


def test_random_erasing_erases_one_box_of_the_stated_size():
    x = torch.ones(400, 3, 32, 32)
    out, _ = RandomErasing(p=0.5)(x, None, EpochRNG(0, 1, torch.device("cpu")))
    erased = (out[:, 0] == 0).flatten(1).sum(1).float() / (32 * 32)
    hit = erased > 0
    assert 0.35 < hit.float().mean() < 0.65
    assert erased[hit].min() >= 0.015 and erased[hit].max() <= 0.36  # scale (0.02, 0.33), rounded boxes
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # every channel of the box


def test_colour_jitter_keeps_range_and_is_the_identity_at_zero_strength():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x, _ = ToFloat()(x, None)
    rng = EpochRNG(0, 1, torch.device("cpu"))
    same, _ = ColorJitter(0.0)(x, None, rng)
    assert torch.allclose(same, x, atol=1e-6)
    jittered, _ = ColorJitter(0.4)(x, None, rng)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.allclose(jittered, same)


# --- the strong recipes' sources, and the parts issue 17 added -----------------------------

def test_each_strong_lr_is_its_source_rows_lr_scaled_by_the_rule_its_comment_states():
    strong = {m: r["strong"] for problem in RECIPES.values() for m, r in problem.items()}
    assert strong["vgg13"]["lr"] == pytest.approx(0.05)  # Bag of Tricks: 0.1 at batch 256, x 128 / 256
    assert strong["beit"]["lr"] == 2e-5  # BEiT pt22k_ft22k: 2e-5 at 512, kept (its script never rescales it)
    assert strong["fcn32s"]["lr"] == 1e-4  # the 0.734 FCN32s report's AdamW lr, kept
    assert strong["deeplabv3"]["lr"] == pytest.approx(0.0025)  # torchvision: 0.02 at 32, x 4 / 32
    assert strong["lraspp"]["lr"] == pytest.approx(0.0025)  # torchvision: 0.01 at 32, x 8 / 32
    assert (strong["deeplabv3"]["aux_weight"], strong["deeplabv3"]["aux_lr_scale"]) == (0.5, 10.0)
    assert strong["beit"]["layer_decay"] == 0.85 and strong["beit"]["weight_decay"] == 1e-8
    assert all(s["ema"] > 0 for m, s in strong.items() if m != "vgg13")  # vgg13's: measured and left out


def test_beit_strong_sums_the_lr_its_comment_states_and_augments_as_beit_fine_tunes():
    # config/recipes.py: 6 x 704 = 4,224 steps (22,500 images, batch 32, the last batch of 4 kept), a warm-up
    # of 1/6, cosine to 0: the lr summed over the run is 2,112 x the peak, 1/18.5 of the source's 0.78.
    strong = RECIPES["p1"]["beit"]["strong"]
    steps = strong["epochs"] * count_batches(22_500, strong["batch_size"])
    assert steps == 4224
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=strong["lr"])
    sched = build_scheduler(strong["sched"], opt, total_steps=steps, warmup_steps=round(strong["warmup"] * steps))
    total = 0.0
    for _ in range(steps):
        total += opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert total == pytest.approx(2112 * strong["lr"], rel=1e-3)
    # The source: 2,502 steps x 30 epochs, a linear warm-up from 0 over 5 epochs, cosine from 2e-5 to 1e-6.
    warm, rest = 5 * 2502, 25 * 2502
    source = sum(2e-5 * i / (warm - 1) for i in range(warm)) + sum(
        1e-6 + 0.5 * (2e-5 - 1e-6) * (1 + math.cos(math.pi * i / rest)) for i in range(rest))
    assert source / total == pytest.approx(18.5, abs=0.05)
    # build_transform's training augmentation (no mixup for these weights).
    assert (strong["augment"], strong["resized_crop"], strong["rand_augment"]) == ("beit-ft", [0.08, 1.0], 9.0)
    assert (strong["random_erasing"], strong["erasing_mode"], strong["label_smoothing"]) == (0.25, "pixel", 0.1)


def test_every_strong_part_is_ablated_and_its_flags_set_the_reference_back():
    for problem, models in RECIPES.items():
        script = p1_train if problem == "p1" else p2_train
        for model in models:
            reference, strong = defaults(problem, model, "reference"), defaults(problem, model, "strong")
            differing = {k for k, v in strong.items() if reference[k] != v} - {"recipe"}
            listed = [k for keys in PARTS[problem][model].values() for k in keys]
            assert sorted(listed) == sorted(differing), model  # each differing flag in exactly one part
            for part, flags in ablations(problem, model).items():
                args = script.get_args_parser().parse_args(["--model", model, "--recipe", "strong", *flags])
                for key in PARTS[problem][model][part]:
                    assert getattr(args, key) == reference[key], (model, part, key)


def test_the_weight_average_spans_a_twentieth_of_the_steps_then_its_cap():
    model = nn.Linear(1, 1, bias=False)
    nn.init.ones_(model.weight)
    ema = WeightAverage(model, decay=0.97)
    ema.update(1)  # the first step copies
    assert ema.module.weight.item() == 1.0
    expected = 1.0
    for step in range(2, 1000):
        model.weight.data.fill_(float(step))
        ema.update(step)
        decay = min(0.97, (step - 1) / (step + 19))
        expected = decay * expected + (1 - decay) * step
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-5)  # float32 weights, 1000 updates
    assert (999 - 1) / (999 + 19) > 0.97  # so the last steps ran at the cap


def test_a_run_with_ema_validates_saves_and_resumes_the_average_exactly(p1_data, tmp_path):
    flags = ["--ema", "0.9", "--seed", "3"]
    p1_train.main(p1_train.get_args_parser().parse_args(p1_flags(p1_data, tmp_path / "straight", "--epochs", "2",
                                                                 *flags)))
    p1_train.main(p1_train.get_args_parser().parse_args(p1_flags(p1_data, tmp_path / "split", "--epochs", "1",
                                                                 *flags)))
    p1_train.main(p1_train.get_args_parser().parse_args(
        ["--resume", str(tmp_path / "split" / "last.pth"), "--epochs", "2", "--no-progress"]))
    a, b = load_checkpoint(tmp_path / "straight" / "last.pth"), load_checkpoint(tmp_path / "split" / "last.pth")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert not all(torch.equal(a["ema"][k], a["model"][k]) for k in a["model"])  # an average, not a copy
    best = load_checkpoint(tmp_path / "straight" / "best.pth")
    epoch = best["best_epoch"]
    snapshot = load_checkpoint(tmp_path / "straight" / f"epoch_{epoch:03d}.pth")
    assert best["weights"] == "ema" and "ema" not in best
    assert all(torch.equal(best["model"][k], snapshot["model"][k]) for k in best["model"])
    if epoch == 2:
        assert all(torch.equal(best["model"][k], a["ema"][k]) for k in a["ema"])


def test_tta_averages_in_float32_whatever_the_models_dtype():
    x = torch.linspace(0, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4)

    class Half(nn.Module):  # outputs in bfloat16, as under autocast
        def forward(self, x):
            return {"out": (1000 + x * torch.linspace(0, 1, x.shape[-1])).to(torch.bfloat16)}

    model = Half()
    out = forward(model, x, "d4")["out"]
    expected = (sum(undo(model(view(x))["out"]).double().softmax(1) for view, undo in tta_views("d4")) / 8).log()
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), expected, rtol=0, atol=1e-6)  # summed in float32, not bfloat16


def test_tta_averages_probabilities_not_logits():
    # Two views of one pixel: one sure of class 0 (logits 10, 0), one mildly for class 1 (0, 1).
    # Their probabilities average to about (0.63, 0.37): class 0; their logits to (5, 0.5): class 0
    # too, but with the confidence of the sure view alone (0.99). The average is of probabilities.
    class TwoViews(nn.Module):
        def forward(self, x):  # the mirror (flipped input) gives the second view
            return {"out": torch.where(x[:, :1, :, :1] > 0, torch.tensor([10.0, 0.0]).view(1, 2, 1, 1),
                                       torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)).expand(1, 2, 1, 2)}

    x = torch.tensor([[[[1.0, -1.0]]]])
    out = forward(TwoViews(), x, "flip")["out"]
    p = torch.tensor([10.0, 0.0]).softmax(0), torch.tensor([0.0, 1.0]).softmax(0)
    assert torch.allclose(out[0, :, 0, 0].exp(), (p[0] + p[1]) / 2, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(1, 1, 2))  # log-probabilities: a cross-entropy's logits


def test_multi_scale_tta_of_a_scale_equivariant_model_is_its_single_scale_answer():
    torch.manual_seed(0)
    pointwise = nn.Conv2d(3, 7, 1)

    class Segmenter(nn.Module):
        def forward(self, x):
            return {"out": pointwise(x)}

    # A pixel-wise model on images constant over space: resizing the input and the output back changes
    # nothing, so every scale gives the scale-1 answer.
    x = torch.randn(2, 3, 1, 1).expand(2, 3, 32, 32).contiguous()
    with torch.no_grad():
        single = Segmenter()(x)["out"].log_softmax(1)
        multi = forward(Segmenter(), x, "d4", scales=(0.75, 1.0, 1.25))["out"]
    assert multi.shape == single.shape and torch.allclose(multi, single, atol=1e-6)
    # A non-constant image at other scales does differ: the scales are really run.
    y = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(forward(Segmenter(), y, "none", scales=(0.5, 1.0))["out"], Segmenter()(y)["out"])
    with pytest.raises(ValueError, match="segmenter"):
        forward(nn.Flatten(), y, "none", scales=(0.5,))


def test_the_auxiliary_head_trains_at_its_own_lr():
    model = get_model("deeplabv3", num_classes=7)
    args = argparse.Namespace(opt="sgd", lr=0.01, weight_decay=1e-4, momentum=0.9, sched="constant", epochs=1,
                              norm_bias_decay=False, aux_lr_scale=10.0)
    updater = Updater.from_flags(args, model, steps_per_epoch=1, device=torch.device("cpu"), amp_dtype=None)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in updater.optimizer.param_groups:
        aux = {names[id(p)].startswith("net.aux_classifier.") for p in group["params"]}
        assert len(aux) == 1 and group["lr"] == pytest.approx(0.1 if aux.pop() else 0.01)
    with pytest.raises(Exception, match="--aux-lr-scale 10.0: FCN32s has no auxiliary head"):
        param_groups(get_model("fcn32s", num_classes=7), weight_decay=0.0, aux_lr_scale=10.0)


def test_multi_scale_training_keeps_masks_hard_labels_aligned_with_their_tiles():
    # Each tile pixel holds its own coordinates (row and column, times 4); the mask is a function of
    # them. Whatever scale and window a sample draws, the mask pixel must be the label of the source
    # pixel the tile's pixel came from.
    n, size = 64, 64
    rows = torch.arange(size).view(size, 1).expand(size, size)
    cols = torch.arange(size).view(1, size).expand(size, size)
    label = (rows // 8 + cols // 8) % 7
    tile = torch.stack([rows * 4, cols * 4, torch.zeros_like(rows)]).to(torch.uint8).expand(n, 3, size, size)
    mask = label.to(torch.uint8).expand(n, size, size)
    tile, _ = ToFloat()(tile.contiguous(), None)
    x, y = RandomScale(0.5, 2.0)(tile, mask.contiguous(), EpochRNG(0, 1, torch.device("cpu")))
    assert x.shape == (n, 3, size, size) and y.shape == (n, size, size) and y.dtype == torch.uint8
    assert set(y.unique().tolist()) <= set(range(7))  # hard labels, no blends
    src_row, src_col = (x[:, 0] * 255 / 4).round().long(), (x[:, 1] * 255 / 4).round().long()
    aligned = (y.long() == label[src_row.clamp(0, size - 1), src_col.clamp(0, size - 1)]).float().mean()
    # Nearest and bilinear sampling agree except where a source coordinate falls on a pixel's edge
    # (x.5), which rounds either way: a handful of pixels in 262,144.
    assert aligned > 0.995
    zoom = (x[:, 0, 1:] - x[:, 0, :-1]).abs().amax((1, 2))  # how fast the row coordinate moves down a column
    assert zoom.min() < zoom.max()  # the samples drew different scales
    same, kept = RandomScale(1.0, 1.0)(tile, mask.contiguous(), EpochRNG(0, 1, torch.device("cpu")))
    assert torch.equal(kept, mask) and torch.allclose(same, tile, atol=1e-5)  # scale 1: identity


@pytest.mark.parametrize("flags, needle", [
    (["--scale-range", "2,1"], "--scale-range 2.0,1.0: give LO,HI with LO at most HI"),
    (["--scale-range", "0.5"], "--scale-range 0.5: give LO,HI with LO at most HI"),
    (["--tta-scales", "1,0"], "--tta-scales: every scale must be positive"),
    (["--ema", "1"], "--ema 1.0: a decay in [0, 1)"),
])
def test_bad_scales_and_decays_are_one_line_errors(flags, needle, p2_data, tmp_path):
    argv = ["--model", "lraspp", "--train-dir", str(p2_data[0]), "--val-dir", str(p2_data[1]),
            "--output-dir", str(tmp_path), *CPU_FP32, *flags]
    with pytest.raises(UserError, match=re.escape(needle)):
        p2_train.main(p2_train.get_args_parser().parse_args(argv))
    assert not tmp_path.joinpath("args.json").exists()  # refused before anything is written
