"""DeepLabv3 with a ResNet-50 (or ResNet-101) backbone (Problem 2, model B).

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017. The network
is torchvision's ``deeplabv3_resnet50`` or ``deeplabv3_resnet101`` (COCO weights with VOC
labels): atrous ResNet at output stride 8, ASPP with rates 6/12/18, a 1x1 branch and image
pooling, and an auxiliary FCN head on layer 3. Both heads' last 1x1 convolutions are replaced by
new ``num_classes`` ones. ``freeze_bn`` keeps the backbone's BatchNorm statistics at the pretrained
ones while training at a small batch (Detectron's FrozenBatchNorm2d; DeepLabv3 itself freezes them
when it fine-tunes at output stride 8 with a small batch).
"""
from torch import nn
from torchvision.models.segmentation import (DeepLabV3_ResNet50_Weights, DeepLabV3_ResNet101_Weights,
                                             deeplabv3_resnet50, deeplabv3_resnet101)

from models.registry import register_model, torchvision_weights, weights_unavailable
from utils.checkpoint import load_weights_into

_WEIGHTS = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
_NORM = _WEIGHTS.transforms()
# Both backbones' COCO weights share the normalisation and the 21 VOC categories.
BACKBONE_WEIGHTS = {"resnet50": _WEIGHTS, "resnet101": DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1}


class DeepLabV3(nn.Module):
    """torchvision's DeepLabv3, returning a plain dict ``{"out", "aux"}`` at the input size."""

    def __init__(self, net, freeze_bn=False):
        super().__init__()
        self.net = net
        self.freeze_bn = freeze_bn

    def train(self, mode=True):
        """``nn.Module.train``; with ``freeze_bn``, the backbone's BatchNorm layers stay in eval mode:
        they normalise with, and no longer update, their running statistics, while their weight and
        bias still learn. The heads' BatchNorm layers are new and train as usual."""
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.net.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x):
        return dict(self.net(x))

    def is_aux(self, name):
        """Whether parameter ``name`` is the auxiliary head's (``--aux-lr-scale``)."""
        return name.startswith("net.aux_classifier.")


@register_model(problem="p2", mean=tuple(_NORM.mean), std=tuple(_NORM.std), has_pretrained=True,
                aux_head=True, train_only=("freeze_bn",))
def deeplabv3(*, num_classes, pretrained=False, pretrained_file=None, backbone="resnet50", freeze_bn=False):
    """DeepLabv3 with new main and auxiliary heads.

    Args:
        num_classes: output classes.
        pretrained: start from torchvision's COCO (VOC labels) weights (downloaded once).
        pretrained_file: a local copy of those weights (torchvision's
            ``deeplabv3_resnet50_coco-cd0a2569.pth`` or ``deeplabv3_resnet101_coco-586e9e4e.pth``).
        backbone: ``resnet50`` (the reference) or ``resnet101`` (about 1.45x the compute: 502 against 346
            GFLOPs a 512x512 tile).
        freeze_bn: in train mode, keep the backbone's BatchNorm layers in eval mode (their running
            statistics stay the pretrained ones; their affine weight and bias still learn). At batch 4
            a BatchNorm batch is 4 tiles, where torchvision's recipe for these weights synchronised
            it over 32; the heads' BatchNorm (new layers) trains either way.
    """
    weights, what = BACKBONE_WEIGHTS[backbone], f"COCO DeepLabv3-{backbone} weights"
    builder = deeplabv3_resnet101 if backbone == "resnet101" else deeplabv3_resnet50
    start = torchvision_weights(what, weights) if pretrained and pretrained_file is None else None
    try:
        net = builder(weights=start, weights_backbone=None, num_classes=len(weights.meta["categories"]), aux_loss=True)
    except (OSError, RuntimeError) as e:
        raise weights_unavailable(what, e) from None
    if pretrained_file is not None:
        load_weights_into(net, pretrained_file, f"DeepLabv3-{backbone} weights")
    net.classifier[4] = nn.Conv2d(256, num_classes, kernel_size=1)
    net.aux_classifier[4] = nn.Conv2d(256, num_classes, kernel_size=1)
    return DeepLabV3(net, freeze_bn=freeze_bn)
