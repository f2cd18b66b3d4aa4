"""BEiT-base fine-tuned with a new linear head (Problem 1, method B).

Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022. The network is timm's
``beit_base_patch16_224.in22k_ft_in22k`` (self-supervised on ImageNet-22k, then fine-tuned on
it); the 21,841-class head is replaced by a new ``num_classes`` head. The 32x32 images are
resized to 224x224 on the device, inside :meth:`BEiT.forward`.
"""
from pathlib import Path

import huggingface_hub
import timm
import torch
import torch.nn.functional as F
from timm.models.beit import checkpoint_filter_fn
from torch import nn

from models.registry import check_downloadable, register_model, weights_unavailable
from utils.errors import UserError, brief

TIMM_NAME = "beit_base_patch16_224.in22k_ft_in22k"
_CFG = timm.get_pretrained_cfg(TIMM_NAME)


class BEiT(nn.Module):
    """A timm BEiT that accepts any input size by resizing it to the network's own."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.input_size = tuple(net.pretrained_cfg["input_size"][-2:])

    def _resize(self, x):
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return x

    def forward_features(self, x):
        """The pooled, normalised embedding the head sees (pre-logits), (B, 768)."""
        return self.net.forward_head(self.net.forward_features(self._resize(x)), pre_logits=True)

    def forward_head(self, features):
        """Logits from :meth:`forward_features`' output."""
        return self.net.head(self.net.head_drop(features))

    def forward(self, x):
        return self.net(self._resize(x))

    def group_matcher(self, coarse=False):
        """timm's grouping of the net's parameters by depth (for layer-wise lr decay, through
        ``timm.optim.param_groups_layer_decay``), under this wrapper's ``net.`` prefix: the
        embeddings (cls token, position and patch embeddings), then each block, then the rest
        (``fc_norm``, the head). timm also puts the final ``norm`` (``--global-pool token``) with the
        last block; BEiT's code, and the groups of this repository's checkpoints, keep it with the
        head, so that entry is left out and the norm falls to the head's group."""
        def prefixed(pattern):
            # re.match anchors each alternative at the start, as in timm's own matching.
            return rf"^net\.(?:{pattern.removeprefix('^')})"

        matcher = {}
        for group, spec in self.net.group_matcher(coarse=coarse).items():
            if isinstance(spec, str):
                matcher[group] = prefixed(spec)
            else:
                matcher[group] = [(prefixed(pattern), suffix) for pattern, suffix in spec if pattern != r"^norm"]
        return matcher

    def no_weight_decay(self):
        """Parameters that take no weight decay (tokens, position tables), as timm names them."""
        return {f"net.{name}" for name in self.net.no_weight_decay()}


@register_model(problem="p1", mean=tuple(_CFG.mean), std=tuple(_CFG.std), has_pretrained=True,
                train_only=("drop_path",))
def beit(*, num_classes, pretrained=False, pretrained_file=None, global_pool="avg", drop_path=0.0):
    """BEiT-base/16 at 224 with a new linear head.

    Args:
        num_classes: outputs of the new head.
        pretrained: load timm's ImageNet-22k weights (downloaded from the Hugging Face hub once).
        pretrained_file: load those weights from a local file instead (a timm/BEiT state dict,
            ``.pth`` or ``.safetensors``); the original head is dropped.
        global_pool: ``avg`` (timm's default for these weights: mean of the patch tokens, then
            ``fc_norm``; what the reference ran) or ``token`` (the [CLS] token; the final norm
            then starts from its default initialisation because these weights carry ``fc_norm``).
        drop_path: stochastic depth rate (Huang et al., ECCV 2016), rising linearly over the blocks.
    """
    kwargs = dict(num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path)
    # A local file, or the hub's cached copy loaded as one: timm would first ask the hub for the
    # file's version, which offline retries for a minute before it falls back to that copy.
    local = None
    if pretrained_file is not None:
        local = Path(pretrained_file), f"--pretrained-file {pretrained_file}"
        if not local[0].is_file():
            raise UserError(f"{local[1]}: no such file")
    elif pretrained and (cached := _hub_cached()) is not None:
        local = cached, f"the hub's cached copy {cached}"
    if local is not None:
        net = timm.create_model(TIMM_NAME, pretrained=False, **kwargs)
        _load_file(net, *local)
        return BEiT(net)
    what = "pretrained BEiT weights from the Hugging Face hub"
    if pretrained:
        check_downloadable(what, hub_url())
    try:
        net = timm.create_model(TIMM_NAME, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise weights_unavailable(what, e) from None
    return BEiT(net)


def hub_url():
    """Where the Hugging Face hub (or the mirror ``HF_ENDPOINT`` names) serves the weights."""
    return f"{huggingface_hub.constants.ENDPOINT}/{_CFG.hf_hub_id}"


def _hub_cached():
    """The path of the weights in the Hugging Face hub's local cache, or ``None`` (the files timm's
    hub loader asks for, in its order)."""
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = huggingface_hub.try_to_load_from_cache(_CFG.hf_hub_id, filename)
        if isinstance(path, str):
            return Path(path)
    return None


# Tensors a file may lack or hold beyond the network: the head (replaced), and the final norm the
# pooling leaves unused (fc_norm for avg, norm for token).
_NOT_LOADED = ("head.", "norm.", "fc_norm.")


def _load_file(net, path, source):
    """The BEiT-base weights of ``path`` (timm's or BEiT's own layout, ``.pth`` or ``.safetensors``) into
    ``net``: every tensor of the network but the head, or nothing. ``source`` names the file in an
    error (``--pretrained-file PATH``, or the hub's cached copy).

    timm's own loader loads a file non-strictly whenever the head is replaced, so that a file of
    another network loads nothing and trains from random weights after one warning; this one refuses it.

    Raises:
        UserError: naming the file: unreadable, or not weights of this network (with what it holds).
    """
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:  # torch.load's and safetensors' errors have no common base
        raise UserError(f"{source}: not a readable weights file (neither torch.save's nor "
                        f"safetensors: {brief(e)})") from None
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    try:
        state = checkpoint_filter_fn(state, net)  # BEiT's original layout to timm's
        result = net.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=False)
    except (RuntimeError, KeyError, ValueError) as e:  # a tensor of another shape, or a layout it cannot read
        raise UserError(f"{source}: not BEiT-base weights ({brief(e)})") from None
    missing = [k for k in result.missing_keys if not k.startswith(_NOT_LOADED)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(_NOT_LOADED)]
    if missing or unexpected:
        held = ", ".join(list(state)[:3])
        raise UserError(f"{source}: not BEiT-base weights: {len(missing)} of the network's tensors "
                        f"missing from it, {len(unexpected)} of its {len(state)} foreign to it (it holds {held}, ...)")
