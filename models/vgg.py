"""VGG13-BN for 32x32 images, trained from scratch (Problem 1, method A).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015; with batch normalisation (Ioffe & Szegedy, ICML 2015). The convolutional trunk is
torchvision's own VGG builder (configuration "B" = VGG13, with BatchNorm); only the classifier
differs from torchvision's, because five max-pools turn a 32x32 image into a single 512-d vector
and the recipe's classifier is 512 -> 512 -> 512 -> classes.
"""
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from models.registry import register_model


class VGG(nn.Module):
    """A VGG trunk with the recipe's three-layer classifier.

    ``pre_logits`` is Dropout, Linear(512, 512), ReLU, Dropout, Linear(512, 512); ``head`` is
    ReLU, Linear(512, num_classes). The output of ``pre_logits`` is the "second-last layer" the
    report's PCA and t-SNE use, returned by :meth:`forward_features`.
    """

    def __init__(self, features, num_classes, width=512, dropout=0.5):
        super().__init__()
        self.features = features
        self.pre_logits = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(width, width), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(width, width),
        )
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(width, num_classes))

    def forward_features(self, x):
        """The 512-d second-last-layer features, (B, 512)."""
        return self.pre_logits(torch.flatten(self.features(x), 1))

    def forward_head(self, features):
        """Logits from :meth:`forward_features`' output."""
        return self.head(features)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(problem="p1")
def vgg13(*, num_classes, pretrained=False, pretrained_file=None, dropout=0.5):
    """VGG13 with BatchNorm for 32x32 inputs: 10 conv3x3+BN+ReLU layers, 5 max-pools."""
    return VGG(make_layers(cfgs["B"], batch_norm=True), num_classes, dropout=dropout)
