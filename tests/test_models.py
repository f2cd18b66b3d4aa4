"""Every registered model: output and feature shapes, gradients, weight loading, its recipe."""
import os
import socket
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import models.beit
from datasets.synthetic import write_tiles
from models import get_model, get_model_spec, list_models, load_trained, untrained_checkpoint
from config.recipes import RECIPES
from utils.checkpoint import save_checkpoint
from utils.errors import UserError
import p1_inference
import p2_inference
from tests.conftest import CPU_FP32

FEATURES = {"vgg13": 512, "beit": 768}


@pytest.mark.numeric
@pytest.mark.parametrize("name", list_models("p1"))
def test_forward_features_backward(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=50)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (2, 50)
    assert feats.shape == (2, FEATURES[name])
    with torch.no_grad():
        assert torch.allclose(model.forward_head(feats), logits, atol=1e-5)
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 49]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_vgg13_matches_the_recipe():
    model = get_model("vgg13", num_classes=50)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 10
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 512), (512, 512), (512, 50)]
    # forward_features is the output of the second Linear, before the last ReLU.
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.head(model.forward_features(x)), model(x))
        assert (model.forward_features(x) < 0).any()


def test_vgg13_has_no_pretrained_weights():
    with pytest.raises(UserError, match="trained from scratch"):
        get_model("vgg13", num_classes=50, pretrained=True)


def test_unknown_model():
    with pytest.raises(UserError, match="unknown model 'resnet'"):
        get_model("resnet", num_classes=50)


def test_beit_token_pool_uses_cls():
    model = get_model("beit", num_classes=50, global_pool="token")
    assert model.net.global_pool == "token"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: every HTTPS request goes through a proxy on a closed loopback port (a refused
    connection, at once), with empty library caches; returns that ``host:port``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    real = timm.create_model

    def no_hub(*args, pretrained=False, **kwargs):
        assert not pretrained, "the hub was asked, and would retry for a minute"
        return real(*args, **kwargs)

    monkeypatch.setattr(models.beit.timm, "create_model", no_hub)
    return f"127.0.0.1:{port}"


def test_beit_loads_a_local_weight_file_and_the_hubs_cached_copy_offline(tmp_path, offline):
    torch.manual_seed(1)
    source = timm.create_model(models.beit.TIMM_NAME, pretrained=False)  # with its 21,841-class head
    path = tmp_path / "beit.pth"
    torch.save(source.state_dict(), path)
    model = get_model("beit", num_classes=50, pretrained_file=path)
    assert torch.equal(model.net.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert torch.equal(model.net.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert model.net.head.weight.shape == (50, 768)
    # The same file in the hub's cache, where a download put it: --pretrained loads it without the network.
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{models.beit._CFG.hf_hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    os.link(path, repo / "snapshots" / ("0" * 40) / "pytorch_model.bin")
    cached = get_model("beit", num_classes=50, pretrained=True)
    assert torch.equal(cached.net.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)


def test_beit_refuses_a_weight_file_of_another_network(tmp_path):
    # timm's loader, with the head replaced, loads non-strictly: such a file trained BEiT from random weights.
    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}, path)
    with pytest.raises(UserError, match=r"vgg.pth: not BEiT-base weights: .* 2 of its 2 foreign to it \(it holds "
                                        r"features.0.weight"):
        get_model("beit", num_classes=50, pretrained_file=path)


def test_beit_missing_weight_file(tmp_path):
    with pytest.raises(UserError, match="--pretrained-file .*nope.pth: no such file"):
        get_model("beit", num_classes=50, pretrained_file=tmp_path / "nope.pth")


@pytest.mark.parametrize("name", ["beit", "lraspp"])
def test_weights_without_network_are_refused_at_once_naming_the_ways_out(name, offline):
    with pytest.raises(UserError) as e:
        get_model(name, num_classes=7, pretrained=True)
    assert f"({offline} unreachable: " in str(e.value) and "\n" not in str(e.value)
    assert all(way in str(e.value) for way in ("--pretrained-file", "hw1_download.py --pretrained", "--no-pretrained"))


@pytest.mark.parametrize("name", list_models("p2"))
def test_segmenters_forward_backward(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=7)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out["out"].shape == (2, 7, 64, 64)
    if name == "deeplabv3":
        assert out["aux"].shape == (2, 7, 64, 64)
    assert ("aux" in out) == get_model_spec(name).aux_head  # what --aux-weight and the report rely on
    loss = sum(nn.functional.cross_entropy(v, torch.randint(0, 7, (2, 64, 64))) for v in out.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list_models("p2"))
@pytest.mark.parametrize("size", [(512, 512), (100, 70)])
def test_segmenters_return_the_input_size(name, size):
    model = get_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out["out"].shape == (1, 7, *size)


def test_fcn32s_reuses_vgg16_classifier_as_convolutions():
    from torchvision.models import vgg16

    from models.fcn import FCN32s

    torch.manual_seed(0)
    vgg = vgg16()
    fcn = FCN32s(vgg, 7)
    assert torch.equal(fcn.head[0].weight.flatten(1), vgg.classifier[0].weight)
    assert torch.equal(fcn.head[3].weight.flatten(1), vgg.classifier[3].weight)
    assert fcn.upsample.stride == (32, 32)
    # A feature map of ones comes back as ones inside (the bilinear kernel sums to 1 per pixel).
    with torch.no_grad():
        up = fcn.upsample(torch.ones(1, 7, 4, 4))
    assert up.shape == (1, 7, 128, 128) and torch.allclose(up[0, :, 32:96, 32:96], torch.ones(7, 64, 64))
    # fc6/fc7 appear once in the state dict (no duplicate keys).
    assert sum(k.endswith("weight") and v.shape == (4096, 512, 7, 7) for k, v in fcn.state_dict().items()) == 1


@pytest.mark.parametrize("name", ["fcn32s", "deeplabv3", "lraspp"])
def test_segmenter_weight_file_errors(name, tmp_path):
    with pytest.raises(UserError, match="nope.pth: no such file"):
        get_model(name, num_classes=7, pretrained_file=tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(UserError, match="wrong.pth: not"):
        get_model(name, num_classes=7, pretrained_file=wrong)


def test_deeplabv3_loads_a_local_weight_file(tmp_path):
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(2)
    source = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(source.state_dict(), tmp_path / "coco.pth")
    model = get_model("deeplabv3", num_classes=7, pretrained_file=tmp_path / "coco.pth")
    assert torch.equal(model.net.backbone.layer3[0].conv1.weight, source.backbone.layer3[0].conv1.weight)
    assert torch.equal(model.net.classifier[0].convs[1][0].weight, source.classifier[0].convs[1][0].weight)
    assert model.net.classifier[4].out_channels == 7 and model.net.aux_classifier[4].out_channels == 7


@pytest.mark.parametrize("name,builder", [("fcn32s", "vgg16"), ("deeplabv3", "deeplabv3_resnet50"),
                                          ("lraspp", "lraspp_mobilenet_v3_large")])
def test_segmenter_unreachable_weights_name_both_flags(name, builder, monkeypatch):
    import models.deeplab
    import models.fcn
    import models.lraspp

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    module = {"fcn32s": models.fcn, "deeplabv3": models.deeplab, "lraspp": models.lraspp}[name]
    monkeypatch.setattr(module, builder, offline)
    with pytest.raises(UserError) as e:
        get_model(name, num_classes=7, pretrained=True)
    assert "--pretrained-file" in str(e.value) and "--no-pretrained" in str(e.value)


def test_lraspp_loads_the_imagenet_backbone_from_a_local_file(tmp_path):
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(3)
    source = mobilenet_v3_large()  # torchvision's ImageNet file holds the whole classifier
    torch.save(source.state_dict(), tmp_path / "mobilenet_v3_large.pth")
    model = get_model("lraspp", num_classes=7, pretrained_file=tmp_path / "mobilenet_v3_large.pth")
    for index in (0, 4, 16):
        for key, value in source.features[index].state_dict().items():
            assert torch.equal(model.net.backbone[str(index)].state_dict()[key], value), (index, key)
    assert model.net.classifier.low_classifier.out_channels == 7 == model.net.classifier.high_classifier.out_channels


def test_lraspp_bn_momentum():
    default = get_model("lraspp", num_classes=7)
    fast = get_model("lraspp", num_classes=7, bn_momentum=0.1)
    norms = [m for m in default.net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.01 for m in norms)  # torchvision's backbone, made for long ImageNet runs
    assert all(m.momentum == 0.1 for m in fast.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_recipe(name):
    spec = get_model_spec(name)
    for recipe in RECIPES[spec.problem][name].values():
        assert {"epochs", "batch_size", "opt", "lr", "sched", "pretrained"} <= recipe.keys()
        assert recipe["pretrained"] is False or spec.has_pretrained


@pytest.mark.parametrize("name, num_classes", [("vgg13", 50), ("lraspp", 7)])
def test_untrained_checkpoint_loads_as_a_trained_one(name, num_classes, tmp_path):
    data_mean, data_std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    ckpt = untrained_checkpoint(name, num_classes=num_classes, mean=data_mean, std=data_std, seed=3)
    save_checkpoint(ckpt, tmp_path / "c.pth")
    spec = get_model_spec(name)
    model, loaded = load_trained(tmp_path / "c.pth", torch.device("cpu"), problem=spec.problem)
    assert (loaded["arch"], loaded["problem"], loaded["num_classes"]) == (name, spec.problem, num_classes)
    # The data's normalisation only where the weights bring none of their own.
    assert loaded["mean"] == pytest.approx(spec.mean or data_mean)
    assert loaded["std"] == pytest.approx(spec.std or data_std)
    torch.manual_seed(3)
    fresh = get_model(name, num_classes=num_classes).state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh[key]), key
    # The grading inference takes it as it takes a trained run's best.pth.
    script = p1_inference if spec.problem == "p1" else p2_inference
    images = tmp_path / "images"
    if spec.problem == "p1":
        images.mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(images / f"{i:04d}.png")
    else:
        write_tiles(images, 2, size=64, seed=0)
    result = script.main(script.get_args_parser().parse_args(
        ["--checkpoint", str(tmp_path / "c.pth"), *CPU_FP32, "--no-progress", str(images),
         str(tmp_path / "out")]))
    assert result["tta"] == "none"


# --- fcn32s --fixed-upsampling, deeplabv3 --freeze-bn ---------------------------------------

def test_fixed_upsampling_is_the_same_network_whose_upsampling_no_step_moves(monkeypatch):
    import copy

    import models.fcn
    from models.fcn import bilinear_kernel
    from training.optim import build_optimizer, param_groups

    vgg = models.fcn.vgg16()  # built once (over a second of random init), copied into both builds
    monkeypatch.setattr(models.fcn, "vgg16", lambda weights=None: copy.deepcopy(vgg))
    nets = {}
    for fixed in (True, False):
        torch.manual_seed(0)
        nets[fixed] = get_model("fcn32s", num_classes=7, fixed_upsampling=fixed)
        # The backbone and fc6/fc7 frozen in both only to keep the steps cheap (134M parameters).
        nets[fixed].features.requires_grad_(False)
        nets[fixed].head.requires_grad_(False)
    fixed, learned = nets[True], nets[False]
    assert not fixed.upsample.weight.requires_grad and learned.upsample.weight.requires_grad
    # A checkpoint written either way loads into a model built either way (the same keys and shapes), the
    # frozen weight staying frozen.
    assert {k: v.shape for k, v in fixed.state_dict().items()} == {k: v.shape for k, v in learned.state_dict().items()}
    fixed.load_state_dict(learned.state_dict())
    assert not fixed.upsample.weight.requires_grad
    x, y = torch.randn(1, 3, 32, 32), torch.randint(0, 7, (1, 32, 32))
    with torch.no_grad():
        fixed.score.weight.normal_(0, 0.1)  # zero-initialised, it would leave the upsampling no gradient
        learned.score.weight.copy_(fixed.score.weight)
        assert torch.equal(fixed.eval()(x)["out"], learned.eval()(x)["out"])  # the same function at init
    # One group (the reference recipes), then timm's groups (the strong recipe's --no-norm-bias-decay).
    for norm_bias_decay in (True, False):
        for is_fixed, model in nets.items():
            start = model.upsample.weight.detach().clone()
            params = param_groups(model.train(), weight_decay=0.1, norm_bias_decay=norm_bias_decay)
            listed = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
            assert any(p is model.upsample.weight for p in listed) != is_fixed  # never reaches the optimiser
            optimizer = build_optimizer("adamw", params, lr=0.01, weight_decay=0.1, momentum=0.0)
            model.zero_grad()
            nn.functional.cross_entropy(model(x)["out"], y).backward()
            optimizer.step()
            assert torch.equal(model.upsample.weight, start) == is_fixed
    assert torch.equal(fixed.upsample.weight, bilinear_kernel(7, 64))


def _bn_means(module):
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_freeze_bn_keeps_the_backbone_statistics_and_trains_the_heads():
    for freeze in (True, False):
        torch.manual_seed(0)
        model = get_model("deeplabv3", num_classes=7, freeze_bn=freeze)
        assert model.train() is model
        backbone_norms = [m for m in model.net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
        assert backbone_norms and all(m.training != freeze for m in backbone_norms)
        assert all(m.weight.requires_grad and m.bias.requires_grad for m in backbone_norms)  # they still learn
        parts = (model.net.backbone, model.net.classifier, model.net.aux_classifier)
        before = [_bn_means(part) for part in parts]
        model(torch.randn(2, 3, 32, 32))
        after = [_bn_means(part) for part in parts]
        moved = [any(not torch.equal(b, a) for b, a in zip(bs, as_)) for bs, as_ in zip(before, after)]
        assert moved == [not freeze, True, True]
        # And back: every layer in eval mode, as inference needs, the statistics untouched.
        model.eval()
        assert not any(m.training for m in model.modules())
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32))["out"].shape == (1, 7, 32, 32)
        assert all(torch.equal(b, a) for b, a in zip(after[0], _bn_means(model.net.backbone)))
