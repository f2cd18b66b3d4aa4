"""FCN-32s on a VGG16 backbone (Problem 2, model A).

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
The backbone is torchvision's ``vgg16`` (ImageNet weights); its fully connected fc6/fc7 become
7x7 and 1x1 convolutions carrying the same weights, a 1x1 layer scores the classes at stride 32,
and one transposed convolution (stride 32, bilinear-initialised) brings the scores back to the
input size. The seed learned that upsampling; the paper's FCN-32s keeps it fixed at bilinear
interpolation (``fixed_upsampling``: its Caffe net gives the upscore deconvolution ``lr_mult: 0``).
The output is raw logits: no ReLU on them (a defect of the reference code).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from models.registry import register_model, torchvision_weights, weights_unavailable
from utils.checkpoint import load_weights_into

_WEIGHTS = VGG16_Weights.IMAGENET1K_V1
_NORM = _WEIGHTS.transforms()


def bilinear_kernel(channels, size):
    """Transposed-convolution weights that upsample each channel bilinearly, (C, C, size, size)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = kernel
    return weight


class FCN32s(nn.Module):
    """VGG16 features, fc6/fc7 as convolutions, a 1x1 score layer and a x32 transposed convolution."""

    def __init__(self, vgg, num_classes, dropout=0.5, fixed_upsampling=False):
        super().__init__()
        self.features = vgg.features
        fc6 = nn.Conv2d(512, 4096, kernel_size=7, padding=3)
        fc7 = nn.Conv2d(4096, 4096, kernel_size=1)
        self.head = nn.Sequential(fc6, nn.ReLU(inplace=True), nn.Dropout2d(dropout),
                                  fc7, nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.score = nn.Conv2d(4096, num_classes, kernel_size=1)
        self.upsample = nn.ConvTranspose2d(num_classes, num_classes, kernel_size=64, stride=32,
                                           padding=16, bias=False)
        with torch.no_grad():
            # fc6/fc7 are VGG16's classifier layers, reshaped (the same function on 7x7 windows).
            fc6.weight.copy_(vgg.classifier[0].weight.view(4096, 512, 7, 7))
            fc6.bias.copy_(vgg.classifier[0].bias)
            fc7.weight.copy_(vgg.classifier[3].weight.view(4096, 4096, 1, 1))
            fc7.bias.copy_(vgg.classifier[3].bias)
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)
            self.upsample.weight.copy_(bilinear_kernel(num_classes, 64))
        # Still a parameter either way, so that checkpoints of both kinds hold the same keys; frozen, no
        # gradient reaches it, so neither the optimiser's step nor its weight decay moves it.
        self.upsample.weight.requires_grad_(not fixed_upsampling)

    def forward(self, x):
        size = x.shape[-2:]
        out = self.upsample(self.score(self.head(self.features(x))))
        if out.shape[-2:] != size:  # sizes that are not multiples of 32
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return {"out": out}


@register_model(problem="p2", mean=tuple(_NORM.mean), std=tuple(_NORM.std), has_pretrained=True,
                train_only=("fixed_upsampling",))
def fcn32s(*, num_classes, pretrained=False, pretrained_file=None, dropout=0.5, fixed_upsampling=False):
    """FCN-32s with a VGG16 backbone.

    Args:
        num_classes: output classes.
        pretrained: start from torchvision's ImageNet VGG16 weights (downloaded once).
        pretrained_file: a local copy of those weights (torchvision's ``vgg16-397923af.pth``).
        dropout: after fc6 and fc7.
        fixed_upsampling: keep the x32 upsampling at its bilinear initialisation (no gradient), as
            Long et al.'s FCN-32s does ("Final layer deconvolutional filters are fixed to bilinear
            interpolation", section 4.3; ``lr_mult=0`` on ``upscore`` in their voc-fcn32s/net.py);
            False learns it, as the seed did.
    """
    what = "ImageNet VGG16 weights"
    try:
        vgg = vgg16(weights=torchvision_weights(what, _WEIGHTS) if pretrained and pretrained_file is None else None)
    except (OSError, RuntimeError) as e:
        raise weights_unavailable(what, e) from None
    if pretrained_file is not None:
        load_weights_into(vgg, pretrained_file, "VGG16 weights")
    return FCN32s(vgg, num_classes, dropout=dropout, fixed_upsampling=fixed_upsampling)
