"""Every registered Problem 1 model: output and feature shapes, gradients, weight loading."""
import pytest
import timm
import torch
from torch import nn

import models.beit
from models import get_model, list_models
from utils.errors import UserError

FEATURES = {"vgg13": 512, "beit": 768}


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


def test_beit_loads_a_local_weight_file(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model(models.beit.TIMM_NAME, pretrained=False)  # with its 21,841-class head
    path = tmp_path / "beit.pth"
    torch.save(source.state_dict(), path)
    model = get_model("beit", num_classes=50, pretrained_file=path)
    assert torch.equal(model.net.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert torch.equal(model.net.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert model.net.head.weight.shape == (50, 768)


def test_beit_missing_weight_file(tmp_path):
    with pytest.raises(UserError, match="--pretrained-file .*nope.pth: no such file"):
        get_model("beit", num_classes=50, pretrained_file=tmp_path / "nope.pth")


def test_beit_unreachable_weights_name_both_flags(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(models.beit.timm, "create_model", offline)
    with pytest.raises(UserError) as e:
        get_model("beit", num_classes=50, pretrained=True)
    assert "--pretrained-file" in str(e.value) and "--no-pretrained" in str(e.value)
    assert "\n" not in str(e.value)
