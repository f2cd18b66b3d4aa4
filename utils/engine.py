"""The training and evaluation loops shared by both problems.

The loops know nothing of problems, models or flags: they take a model, a criterion, an
iterable of ``(inputs, targets)`` batches already on the device, a batch transform
(augmentation and normalisation, run on the device), and an optimiser or a metric. The same
loop body runs with mixed precision on or off, and with one process or several (sums over
samples are reduced over every process at the end, so the returned figures are global).
"""
import contextlib
import math
import time

import torch
from tqdm import tqdm

from utils.distributed import all_reduce_sum
from utils.errors import UserError


def autocast(device, amp_dtype):
    """``torch.autocast`` for ``amp_dtype``, or a no-op context when it is ``None``."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def forward(model, x, tta=False):
    """``model(x)``, or with ``tta`` the mean of it and of the horizontally flipped input.

    Spatial outputs (a segmenter's dict of (B, C, H, W) maps) are flipped back before averaging;
    a classifier's logits are averaged as they are.
    """
    out = model(x)
    if not tta:
        return out
    flipped = model(x.flip(-1))
    if isinstance(out, dict):
        return {k: (v + flipped[k].flip(-1)) / 2 for k, v in out.items()}
    return (out + flipped) / 2


def _global_mean(total, count):
    """``total / count`` summed over every process (``total`` a device tensor, ``count`` an int)."""
    sums = all_reduce_sum(torch.stack([total.double(), torch.tensor(float(count), device=total.device,
                                                                       dtype=torch.float64)]))
    total, count = sums.tolist()
    return total / max(count, 1), int(count)


class _Throttle:
    """True at most every ``seconds`` (and at the last step): reading the loss syncs the device."""

    def __init__(self, total, seconds=1.0):
        self.total, self.seconds, self.last = total, seconds, time.perf_counter()

    def __call__(self, step):
        now = time.perf_counter()
        if step == self.total or now - self.last >= self.seconds:
            self.last = now
            return True
        return False


def train_one_epoch(model, criterion, optimizer, batches, *, transform, device, scheduler=None,
                    scaler=None, amp_dtype=None, desc="train", progress=True):
    """Train for one pass over ``batches``.

    Args:
        model: the network, already on ``device``.
        criterion: ``loss = criterion(model(x), y)``; may take the model's raw output (a dict).
        optimizer: the optimiser.
        batches: a sized iterable of ``(x, y)`` on ``device``.
        transform: ``(x, y) -> (x, y)``, augmentation then normalisation, on the device.
        device: the ``torch.device``.
        scheduler: a learning-rate scheduler stepped after every optimiser step, or ``None``.
        scaler: a ``torch.amp.GradScaler`` (float16), or ``None``.
        amp_dtype: the autocast dtype, or ``None`` for full precision.
        desc: the progress bar's label.
        progress: show a progress bar.

    Returns:
        ``{"loss": mean training loss over samples, "lr": the learning rate at the start,
        "samples": n, "seconds": t, "images_per_second": n / t}``.
    """
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    loss_sum = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
    report_now = _Throttle(len(batches))
    for step, (x, y) in enumerate(bar, 1):
        x, y = transform(x, y)
        with autocast(device, amp_dtype):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().float() * x.shape[0]
        seen += x.shape[0]
        if report_now(step):
            mean = loss_sum.item() / seen
            if not math.isfinite(mean):
                raise UserError(f"training diverged: loss is {mean} at step {step} of {desc} "
                                "(lower --lr, or use --amp off)")
            if progress:
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    loss, seen = _global_mean(loss_sum, seen)
    seconds = time.perf_counter() - start
    return {"loss": loss, "lr": lr, "samples": seen, "seconds": seconds,
            "images_per_second": seen / seconds if seconds > 0 else 0.0}


@torch.inference_mode()
def evaluate(model, criterion, batches, metric, *, transform, device, amp_dtype=None, tta=False,
             desc="eval", progress=True):
    """Evaluate over every sample of ``batches`` (no dropping, no padding).

    Args:
        model: the network, already on ``device``.
        criterion: the evaluation loss, ``criterion(model(x), y)``.
        batches: a sized iterable of ``(x, y)`` on ``device``.
        metric: an object with ``update(output, y)`` and ``compute() -> dict``.
        transform: ``(x, y) -> (x, y)`` (normalisation only).
        device: the ``torch.device``.
        amp_dtype: the autocast dtype, or ``None``.
        tta: average with the horizontally flipped input (see :func:`forward`).
        desc: the progress bar's label.
        progress: show a progress bar.

    Returns:
        ``{"loss": mean loss over samples, **metric.compute()}``, over every process.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    for x, y in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False,
                     dynamic_ncols=True):
        x, y = transform(x, y)
        with autocast(device, amp_dtype):
            output = forward(model, x, tta)
            loss = criterion(output, y)
        loss_sum += loss.float() * x.shape[0]
        seen += x.shape[0]
        metric.update(output, y)
    loss, _ = _global_mean(loss_sum, seen)
    return {"loss": loss, **metric.compute()}


@torch.inference_mode()
def predict(model, batches, *, transform, device, amp_dtype=None, tta=False, desc="predict", progress=True):
    """Run the model over ``batches`` of inputs, moving each to ``device``.

    Args:
        model: the network, already on ``device``.
        batches: a sized iterable of ``(x, _)`` input batches, on any device (pinned memory for
            a non-blocking copy).
        transform: ``(x, None) -> (x, None)`` (normalisation).
        device, amp_dtype, tta, desc, progress: as in :func:`evaluate`.

    Yields:
        The model's output for each batch, in order.
    """
    model.eval()
    for x, _ in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False,
                     dynamic_ncols=True):
        x, _ = transform(x.to(device, non_blocking=True), None)
        with autocast(device, amp_dtype):
            yield forward(model, x, tta)
