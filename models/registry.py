"""The model registry: ``@register_model`` fills it, ``get_model(name, ...)`` builds from it."""
import inspect
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import torch

from utils.args import REPO
from utils.checkpoint import load_checkpoint, model_entries
from utils.errors import UserError, brief
from utils.runtime import compile_model, place_model

REACH_TIMEOUT = 3.0  # seconds a pretrained weights' host has to take a connection (check_downloadable)


@dataclass(frozen=True)
class ModelSpec:
    """What the scripts need to know about a registered model before building it.

    Attributes:
        name: the registry name (``--model``).
        builder: ``builder(*, num_classes, pretrained, pretrained_file, **kwargs) -> nn.Module``.
        problem: ``"p1"`` (classification) or ``"p2"`` (segmentation).
        mean, std: the normalisation its pretrained weights expect, or ``None`` to use the
            dataset's own statistics (models trained from scratch).
        has_pretrained: whether pretrained weights exist for it.
        train_only: builder options that change training alone (stochastic depth, say): a
            checkpoint need not record them to rebuild the model for inference.
        aux_head: whether it returns an ``aux`` output (a segmenter's auxiliary head), which
            ``--aux-weight`` weighs in the loss.
    """

    name: str
    builder: Callable
    problem: str
    mean: tuple | None = None
    std: tuple | None = None
    has_pretrained: bool = False
    train_only: tuple = ()
    aux_head: bool = False


_REGISTRY = {}
_COMMON = ("num_classes", "pretrained", "pretrained_file")


def register_model(*, problem, mean=None, std=None, has_pretrained=False, train_only=(), aux_head=False):
    """Decorator registering a builder under its function name."""

    def wrap(fn):
        _REGISTRY[fn.__name__] = ModelSpec(fn.__name__, fn, problem, mean, std, has_pretrained, tuple(train_only),
                                           aux_head)
        return fn

    return wrap


def list_models(problem=None):
    """Registered names, optionally only those of one problem."""
    return [name for name, spec in _REGISTRY.items() if problem in (None, spec.problem)]


def get_model_spec(name):
    """The :class:`ModelSpec` of ``name``."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def get_model(name, *, num_classes, pretrained=False, pretrained_file=None, **kwargs):
    """Build a registered model.

    Args:
        name: registry name.
        num_classes: outputs of the new head.
        pretrained: load the library's pretrained weights (downloaded once, then cached).
        pretrained_file: load the pretrained weights from this local file instead.
        **kwargs: model-specific options (``global_pool`` for ``beit``, say).
    """
    spec = get_model_spec(name)
    if (pretrained or pretrained_file) and not spec.has_pretrained:
        raise UserError(f"{name} is trained from scratch: it has no pretrained weights "
                        "(drop --pretrained / --pretrained-file)")
    return spec.builder(num_classes=num_classes, pretrained=pretrained,
                        pretrained_file=pretrained_file, **kwargs)


def load_trained(path, device, *, problem=None, compile=False):
    """Rebuild a trained model from its checkpoint alone (architecture, options, weights).

    Args:
        path: a checkpoint written by a training run (``best.pth``, ``last.pth``, a snapshot).
        device: where the model goes (in eval mode).
        problem: ``"p1"`` or ``"p2"`` to refuse the other problem's checkpoints.
        compile: return the model through ``torch.compile`` (eager where it cannot build code:
            :class:`utils.runtime.CompiledOrEager`).

    Returns:
        ``(model, checkpoint dict)``.

    Raises:
        UserError: the file is missing (a grading checkpoint points to ``hw1_download.sh``), is
            not a checkpoint of this project or of ``problem``, or does not fit its model.
    """
    path = Path(path)
    if not path.is_file() and path.parent == REPO / "checkpoints":
        raise UserError(f"{path}: no such checkpoint file (bash hw1_download.sh fetches the trained "
                        "checkpoints listed in checkpoints.txt)")
    ckpt = load_checkpoint(path, problem=problem)
    try:
        model = get_model(ckpt["arch"], pretrained=False, **ckpt["model_kwargs"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"{path}: checkpoint does not match its model {ckpt['arch']!r} ({brief(e)})") from None
    model = place_model(model, device).eval()
    return (compile_model(model) if compile else model), ckpt


def untrained_checkpoint(name, *, num_classes, mean, std, seed=0):
    """A checkpoint of ``name`` with seeded random weights, in the layout :func:`load_trained`
    reads: what benchmarks and the GPU check grade with where no trained run exists.

    Args:
        name: a registered model.
        num_classes: outputs of the head.
        mean, std: the data's normalisation, kept only for a model whose weights bring none.
        seed: the weights' seed (the global RNG is seeded with it).

    Returns:
        The checkpoint dict, for :func:`utils.checkpoint.save_checkpoint`.
    """
    spec = get_model_spec(name)
    torch.manual_seed(seed)
    model = get_model(name, num_classes=num_classes)
    if spec.mean is not None:
        mean, std = spec.mean, spec.std
    # No run, so no flags: no TTA.
    return {**model_entries(problem=spec.problem, arch=name, model_kwargs={"num_classes": num_classes}, mean=mean,
                            std=std, args={}),
            "model": model.state_dict(), "epoch": 0}


def model_options(name, namespace):
    """The model-specific options of ``name`` found in ``namespace`` (parsed flags).

    Every keyword a builder takes beyond the common ones (``global_pool`` for beit, ``dropout``
    for vgg13 and fcn32s) is a flag of the same name; the result is what the checkpoint records
    to rebuild the model.
    """
    return {k: getattr(namespace, k) for k in option_names(name) if hasattr(namespace, k)}


def option_names(name=None):
    """The keywords the builder of ``name`` takes beyond the common ones; of every model's
    builder when ``name`` is ``None``."""
    names = [name] if name is not None else list(_REGISTRY)
    return [k for n in names for k in inspect.signature(get_model_spec(n).builder).parameters if k not in _COMMON]


def weights_unavailable(what, error):
    """The one-line error for pretrained weights that could not be had, naming the ways out."""
    return UserError(f"could not load the {what} ({error if isinstance(error, str) else brief(error)}); pass "
                     "--pretrained-file PATH to load them from a local file (python3 hw1_download.py --pretrained DIR "
                     "saves them, on a machine with internet), or --no-pretrained to start from random weights")


def check_downloadable(what, url):
    """Refuse at once, in one line, weights to be downloaded from ``url`` when its host (or the
    environment's proxy for it) takes no connection within :data:`REACH_TIMEOUT` seconds.

    The libraries' own downloads would say it late: offline, timm's Hugging Face hub call retries
    for about a minute (22 lines of retries over 57 s for BEiT) before its error, and torch.hub
    waits without a timeout where a network drops packets.

    Raises:
        UserError: :func:`weights_unavailable`'s, naming the host that did not answer.
    """
    reason = unreachable(url)
    if reason is not None:
        raise weights_unavailable(what, reason)


def unreachable(url):
    """Why the host of ``url`` (or the environment's proxy for it) takes no connection within
    :data:`REACH_TIMEOUT` seconds (``host:port unreachable: why``), or ``None`` when it takes one."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "//" in proxy else "//" + proxy)
    host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT).close()
    except OSError as e:
        return f"{host}:{port} unreachable: {brief(e)}"
    return None


def torchvision_weights(what, weights):
    """``weights`` (a torchvision ``WeightsEnum`` member) to build with, once they are in torch.hub's
    cache or their host answers (:func:`check_downloadable`)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(weights.url).path).name
    if not cached.is_file():
        check_downloadable(what, weights.url)
    return weights
