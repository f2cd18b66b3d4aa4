"""Test-time augmentation: the views of each mode, multi-scale inference, and the forward pass
that averages them. Validation, grading and the report figures all predict through :func:`forward`.
"""
import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

MODES = ("none", "flip", "d4")


class TTA(NamedTuple):
    """Test-time augmentation: the views (a mode of :func:`tta_views`) and the input scales
    (segmenters only; see :func:`forward`). ``TTA()`` is none."""

    mode: str = "none"
    scales: tuple = (1.0,)


def run_tta(run_args, mode=None, scales=None):
    """The test-time augmentation a run validated with (its ``args``: ``tta``, ``tta_scales``),
    unless ``mode`` or ``scales`` (an inference script's ``--tta``, ``--tta-scales``) say otherwise."""
    return TTA(mode or run_args.get("tta") or "none", tuple(scales or run_args.get("tta_scales") or (1.0,)))


def tta_views(mode):
    """The views of test-time augmentation ``mode``, as ``(view, undo)`` pairs of functions on
    (..., H, W) tensors: ``undo(view(x)) == x``. ``flip``: the image and its horizontal mirror;
    ``d4``: the 8 symmetries of the square (4 rotations by 90 degrees, each mirrored or not)."""
    if mode == "none":
        return [(_identity, _identity)]
    if mode == "flip":
        return [(_identity, _identity), (_hflip, _hflip)]
    if mode == "d4":
        views = []
        for k in range(4):
            views.append((functools.partial(_rot, k=k), functools.partial(_rot, k=-k)))
            views.append((functools.partial(_flip_rot, k=k), functools.partial(_unrot_flip, k=k)))
        return views
    raise ValueError(f"unknown test-time augmentation {mode!r}")


def _identity(x):
    return x


def _hflip(x):
    return x.flip(-1)


def _rot(x, k):
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


def _flip_rot(x, k):
    return _rot(x.flip(-1), k)


def _unrot_flip(x, k):
    return _rot(x, -k).flip(-1)


def forward(model, x, tta="none", scales=(1.0,)):
    """``model(x)``, or with test-time augmentation the average of every view's outputs.

    A segmenter's maps (each of its dict, brought back to the input's frame) are averaged as class
    probabilities (softmax over dim 1), as DeepLab averages its scales and flips (Chen et al.,
    TPAMI 2018), rather than as logits (whose mean is a geometric mean of the probabilities, which
    one overconfident view can dominate); the average is returned as its logarithm: log-
    probabilities, which a cross-entropy takes as logits (``log_softmax`` leaves them as they are)
    and whose argmax is the averaged probabilities'. A classifier's logits are averaged as they are:
    the recipes' classification figures were measured so (on the demo's digits, averaging the flip
    TTA's probabilities instead changed one prediction in 359). ``tta`` is a mode of
    :func:`tta_views`. ``scales`` (segmenters only) runs every view at each scale of the input too
    (bilinear resizing), and resizes the outputs back before averaging. The sum is taken in
    float32, whatever dtype autocast computes the outputs in: eight or twenty-four bfloat16 terms
    would keep ~3 digits.
    """
    views = tta_views(tta)
    scales = tuple(float(s) for s in scales)
    if len(views) == 1 and scales == (1.0,):
        return model(x)
    size = x.shape[-2:]
    total, count = None, 0
    for scale in scales:
        xs = x if scale == 1.0 else F.interpolate(
            x, size=[max(1, round(n * scale)) for n in size], mode="bilinear", align_corners=False)
        for view, undo in views:
            out = model(view(xs))
            if isinstance(out, dict):
                out = {k: _resized(undo(v), size).softmax(1) for k, v in out.items() if v is not None}
                total = out if total is None else {k: total[k] + v for k, v in out.items()}
            elif scale != 1.0:
                raise ValueError("multi-scale test-time augmentation needs a segmenter's spatial outputs")
            else:
                total = out.float() if total is None else total + out.float()
            count += 1
    if isinstance(total, dict):
        return {k: _log_mean(v, count) for k, v in total.items()}
    return total / count


def _log_mean(total, count):
    """``log(total / count)``, a probability of 0 (a softmax's underflow) kept finite."""
    return (total / count).clamp_min(torch.finfo(torch.float32).tiny).log()


def _resized(t, size):
    """A (B, C, h, w) map in float32, resized (bilinearly) to ``size`` when it is not that size already."""
    t = t.float()
    return t if t.shape[-2:] == size else F.interpolate(t, size=list(size), mode="bilinear", align_corners=False)
