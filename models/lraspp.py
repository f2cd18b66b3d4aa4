"""LR-ASPP on a MobileNetV3-Large backbone (Problem 2): a small, fast segmenter.

Howard et al., "Searching for MobileNetV3", ICCV 2019 (section 6.3, Lite Reduced Atrous Spatial
Pyramid Pooling). The network is torchvision's ``lraspp_mobilenet_v3_large``: MobileNetV3-Large
with its last blocks dilated (output stride 16), a head that gates the 960-channel high-level
features with a pooled sigmoid branch, and a low-level (stride 8) 40-channel branch added before
bilinear upsampling to the input size. 3.2M parameters, all its convolutions followed by
BatchNorm: it learns from random weights in a few CPU minutes, and trains at batch sizes and
speeds that fit a small GPU. It has no auxiliary head.
"""
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from models.registry import register_model, torchvision_weights, weights_unavailable
from utils.checkpoint import load_weights_into

_WEIGHTS = MobileNet_V3_Large_Weights.IMAGENET1K_V1
_NORM = _WEIGHTS.transforms()


class LRASPP(nn.Module):
    """torchvision's LR-ASPP, returning a plain dict ``{"out"}`` at the input size."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return dict(self.net(x))


@register_model(problem="p2", mean=tuple(_NORM.mean), std=tuple(_NORM.std), has_pretrained=True)
def lraspp(*, num_classes, pretrained=False, pretrained_file=None, bn_momentum=None):
    """LR-ASPP with a MobileNetV3-Large backbone and a new ``num_classes`` head.

    Args:
        num_classes: output classes.
        pretrained: start the backbone from torchvision's ImageNet MobileNetV3-Large weights
            (downloaded once); the head starts from random weights either way.
        pretrained_file: a local copy of those weights (torchvision's
            ``mobilenet_v3_large-8738ca79.pth``, the whole classifier's state dict: its
            ``features`` become the backbone, its classifier is dropped).
        bn_momentum: every BatchNorm layer's running-statistics momentum; ``None`` keeps
            torchvision's (0.01 in the backbone, made for long ImageNet runs; 0.1 in the head).
            Validation and grading use those statistics: after 100 steps at 0.01 they still hold
            37% of their initial values, so a short run, or one from random weights, wants 0.1.
    """
    what = "ImageNet MobileNetV3-Large weights"
    backbone = torchvision_weights(what, _WEIGHTS) if pretrained and pretrained_file is None else None
    try:
        net = lraspp_mobilenet_v3_large(weights=None, num_classes=num_classes, weights_backbone=backbone)
    except (OSError, RuntimeError) as e:
        raise weights_unavailable(what, e) from None
    if pretrained_file is not None:
        imagenet = load_weights_into(mobilenet_v3_large(), pretrained_file, "MobileNetV3-Large weights")
        # The dilated backbone has the same weights as the classifier's features (dilation only
        # changes how the convolutions are applied); the segmenter keeps every feature block.
        net.backbone.load_state_dict(imagenet.features.state_dict())
    if bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = bn_momentum
    return LRASPP(net)
