"""DeepLabv3 with a ResNet-50 backbone (Problem 2, model B).

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017. The network
is torchvision's ``deeplabv3_resnet50`` (COCO weights with VOC labels): atrous ResNet-50 at
output stride 8, ASPP with rates 6/12/18, a 1x1 branch and image pooling, and an auxiliary FCN
head on layer 3. Both heads' last 1x1 convolutions are replaced by new ``num_classes`` ones.
"""
from torch import nn
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, deeplabv3_resnet50

from models.registry import register_model, weights_unavailable
from utils.checkpoint import load_weights_into

_WEIGHTS = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
_NORM = _WEIGHTS.transforms()


class DeepLabV3(nn.Module):
    """torchvision's DeepLabv3, returning a plain dict ``{"out", "aux"}`` at the input size."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return dict(self.net(x))


@register_model(problem="p2", mean=tuple(_NORM.mean), std=tuple(_NORM.std), has_pretrained=True, aux_head=True)
def deeplabv3(*, num_classes, pretrained=False, pretrained_file=None):
    """DeepLabv3-ResNet50 with new main and auxiliary heads.

    Args:
        num_classes: output classes.
        pretrained: start from torchvision's COCO (VOC labels) weights (downloaded once).
        pretrained_file: a local copy of those weights (torchvision's
            ``deeplabv3_resnet50_coco-cd0a2569.pth``).
    """
    try:
        net = deeplabv3_resnet50(weights=_WEIGHTS if pretrained and pretrained_file is None else None,
                                 weights_backbone=None, num_classes=len(_WEIGHTS.meta["categories"]),
                                 aux_loss=True)
    except (OSError, RuntimeError) as e:
        raise weights_unavailable("COCO DeepLabv3 weights", e) from None
    if pretrained_file is not None:
        load_weights_into(net, pretrained_file, "DeepLabv3-ResNet50 weights")
    net.classifier[4] = nn.Conv2d(256, num_classes, kernel_size=1)
    net.aux_classifier[4] = nn.Conv2d(256, num_classes, kernel_size=1)
    return DeepLabV3(net)
