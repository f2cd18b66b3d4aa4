"""The training and evaluation loops shared by both problems.

The loops know nothing of problems, models or flags: they take a model, a criterion, an
iterable of ``(inputs, targets)`` batches already on the device, a batch transform
(augmentation and normalisation, run on the device), and an optimiser or a metric. The same
loop body runs with mixed precision on or off, and with one process or several (sums over
samples are reduced over every process at the end, so the returned figures are global).
"""
import contextlib
import functools
import time
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.args import MAX_SKIPPED_IN_A_ROW
from utils.distributed import all_reduce_sum
from utils.errors import UserError
from utils.runtime import memory_format_of, out_of_memory, peak_memory_gib


def autocast(device, amp_dtype):
    """``torch.autocast`` for ``amp_dtype``, or a no-op context when it is ``None``."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def tta_mode(value):
    """A ``--tta`` value as one of ``none``, ``flip``, ``d4`` (runs saved before the modes
    recorded ``True`` for flip and ``False`` for none)."""
    return {True: "flip", False: "none", None: "none"}.get(value, value) if not isinstance(value, str) else value


class TTA(NamedTuple):
    """Test-time augmentation: the views (a mode of :func:`tta_views`) and the input scales
    (segmenters only; see :func:`forward`). ``TTA()`` is none."""

    mode: str = "none"
    scales: tuple = (1.0,)


def run_tta(run_args, mode=None, scales=None):
    """The test-time augmentation a run validated with (its ``args``: ``tta``, ``tta_scales``),
    unless ``mode`` or ``scales`` (an inference script's ``--tta``, ``--tta-scales``) say otherwise."""
    return TTA(mode or tta_mode(run_args.get("tta")), tuple(scales or run_args.get("tta_scales") or (1.0,)))


def tta_views(mode):
    """The views of test-time augmentation ``mode``, as ``(view, undo)`` pairs of functions on
    (..., H, W) tensors: ``undo(view(x)) == x``. ``flip``: the image and its horizontal mirror;
    ``d4``: the 8 symmetries of the square (4 rotations by 90 degrees, each mirrored or not)."""
    mode = tta_mode(mode)
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
    """``model(x)``, or with test-time augmentation the mean of the outputs of every view.

    Spatial outputs (a segmenter's dict of (B, C, H, W) maps) are brought back to the input's
    frame before averaging; a classifier's logits are averaged as they are. ``tta`` is a mode of
    :func:`tta_views` (``True`` means ``flip``). ``scales`` (segmenters only) runs every view at
    each scale of the input too (bilinear resizing), and resizes the outputs back before averaging
    (multi-scale inference: Chen et al., DeepLab, TPAMI 2018). The sum is taken in float32, whatever
    dtype autocast computes the outputs in: eight or twenty-four bfloat16 terms would keep ~3 digits.
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
                out = {k: _resized(undo(v), size) for k, v in out.items() if v is not None}
                total = out if total is None else {k: total[k] + v for k, v in out.items()}
            elif scale != 1.0:
                raise ValueError("multi-scale test-time augmentation needs a segmenter's spatial outputs")
            else:
                total = out.float() if total is None else total + out.float()
            count += 1
    if isinstance(total, dict):
        return {k: v / count for k, v in total.items()}
    return total / count


def _resized(t, size):
    """A (B, C, h, w) map in float32, resized (bilinearly) to ``size`` when it is not that size already."""
    t = t.float()
    return t if t.shape[-2:] == size else F.interpolate(t, size=list(size), mode="bilinear", align_corners=False)


def _sums(*values, device):
    """Each value (a device scalar or a number) summed over every process, in one all-reduce."""
    return all_reduce_sum(torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device)
                                       for v in values])).tolist()


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



class LossMeter:
    """The running figures of a training pass, kept on the device (reading them syncs it).

    A step counts when its loss is finite and the optimiser took it: its loss, times its
    samples, goes into ``sum`` and its samples into ``samples``. Any other step is left out of
    both and counted in ``skipped``; ``most_in_a_row`` is the longest run of such steps.

    Args:
        device: where the figures live.
        loss_sum, samples, skipped: what an earlier part of the same pass had summed (a resumed
            epoch).
    """

    def __init__(self, device, loss_sum=0.0, samples=0, skipped=0):
        self.sum = torch.tensor(loss_sum, dtype=torch.float32, device=device)
        self.samples = torch.tensor(samples, dtype=torch.int64, device=device)
        self.skipped = torch.tensor(skipped, dtype=torch.int64, device=device)
        self.in_a_row = torch.zeros((), dtype=torch.int64, device=device)
        self.most_in_a_row = torch.zeros((), dtype=torch.int64, device=device)
        self.images = 0  # every sample this object saw, counted or not: the throughput's

    def add(self, loss, n, skipped=None):
        """Add a batch's mean ``loss`` over its ``n`` samples; ``skipped`` (a device bool, or
        ``None``) says the optimiser did not take the step."""
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss) if skipped is None else ~torch.isfinite(loss) | skipped
        # where, not a product: a non-finite loss times 0 is still NaN.
        self.sum += torch.where(bad, 0.0, loss * n)
        self.samples += torch.where(bad, 0, n)
        self.skipped += bad
        self.in_a_row = torch.where(bad, self.in_a_row + 1, 0)
        self.most_in_a_row = torch.maximum(self.most_in_a_row, self.in_a_row)
        self.images += n

    def mean(self):
        """The mean loss so far over the steps that counted (this process's samples)."""
        return (self.sum / self.samples.clamp(min=1)).item()

    def check(self, limit, where):
        """Raise when ``limit`` steps in a row were left out.

        Raises:
            UserError: naming the limit, ``where`` the pass stands, and the ways out.
        """
        most = int(self.most_in_a_row)
        if most < limit:
            return
        if limit == 1:
            raise UserError(f"training diverged: the loss or the gradients are not finite ({where}); "
                            "lower --lr")
        raise UserError(f"training diverged: {most} steps in a row had a loss or gradients that are not finite "
                        f"(float16 overflow is skipped, but {limit} in a row stop the run; {where}); lower --lr, "
                        "or use --amp bf16 (GPUs with native bfloat16) or --amp off")


def train_one_epoch(model, criterion, updater, batches, *, transform, device, meter=None, should_stop=None,
                    desc="train", progress=True):
    """Train for one pass over ``batches``, or for the part of it before a stop is requested.

    A step whose loss or gradients are not finite is left out of the loss and counted as
    skipped. Under a gradient scaler (float16) the optimiser did not take it, and the pass goes
    on unless :data:`MAX_SKIPPED_IN_A_ROW` such steps come in a row; without one the weights
    took it, and the pass stops at once. Both raise a :class:`UserError` (checked about once a
    second, when the progress is read, and at the end).

    Args:
        model: the network, already on ``device``; batches are given to it in the memory format
            of its weights (channels_last on CUDA).
        criterion: ``loss = criterion(model(x), y)``; may take the model's raw output (a dict).
        updater: a :class:`training.optim.Updater`: ``step(loss)`` backpropagates and steps; the
            forward pass runs under its ``amp_dtype`` (autocast, or ``None`` for full precision).
        batches: a sized iterable of ``(x, y)`` on ``device``; ``len`` counts the whole pass.
            A pass that continues an earlier one says how many batches were done before in
            ``batches.start`` and yields the rest.
        transform: ``(x, y) -> (x, y)``, augmentation then normalisation, on the device.
        device: the ``torch.device``.
        meter: a :class:`LossMeter` to add to (one holding an earlier part's sums), or ``None``.
        should_stop: called after every step; when it returns True the pass ends there.
        desc: the progress bar's label.
        progress: show a progress bar (with the peak GPU memory on CUDA).

    Returns:
        ``{"loss": mean training loss over the samples of the steps that counted, "loss_sum": its
        sum, "samples": their number, "skipped": steps left out, "steps": batches done,
        "complete": whether the pass reached its end, "seconds": t, "images_per_second"}``, every
        figure over every process except ``skipped``, this process's count (with several
        processes each skips the same steps: they share the gradients); throughput counts this
        call's samples only.

    Raises:
        UserError: the run diverged (see above).
    """
    model.train()
    meter = meter or LossMeter(device)
    limit = MAX_SKIPPED_IN_A_ROW if updater.skips_nonfinite else 1
    layout = memory_format_of(model)
    start, first = time.perf_counter(), getattr(batches, "start", 0)
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False, dynamic_ncols=True,
               initial=first, total=len(batches))
    report_now = _Throttle(len(batches))
    step = first
    for step, (x, y) in enumerate(bar, first + 1):
        x, y = transform(x, y)
        x = x.contiguous(memory_format=layout)
        with autocast(device, updater.amp_dtype):
            loss = criterion(model(x), y)
        meter.add(loss, x.shape[0], updater.step(loss))
        if report_now(step):
            meter.check(limit, f"by step {step} of {desc}")
            if progress:
                rate = meter.images / (time.perf_counter() - start)
                peak = peak_memory_gib(device)
                bar.set_postfix(loss=f"{meter.mean():.4f}", img_s=f"{rate:.0f}",
                                **({} if peak is None else {"mem": f"{peak:.1f}G"}))
        if step < len(batches) and should_stop is not None and should_stop():
            break
    bar.close()
    meter.check(limit, f"by step {step} of {desc}")
    loss_sum, seen, images = _sums(meter.sum, meter.samples, meter.images, device=device)
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "loss_sum": loss_sum, "samples": int(seen),
            "skipped": int(meter.skipped), "steps": step, "complete": step >= len(batches), "seconds": seconds,
            "images_per_second": images / seconds if seconds > 0 else 0.0}


@torch.inference_mode()
def evaluate(model, criterion, batches, metric, *, transform, device, amp_dtype=None, tta=TTA(), desc="eval",
             progress=True):
    """Evaluate over every sample of ``batches`` (no dropping, no padding).

    Args:
        model: the network, already on ``device`` (batches take the memory format of its weights).
        criterion: the evaluation loss, ``criterion(model(x), y)``.
        batches: a sized iterable of ``(x, y)`` on ``device``.
        metric: an object with ``update(output, y)`` and ``compute() -> dict``.
        transform: ``(x, y) -> (x, y)`` (normalisation only).
        device: the ``torch.device``.
        amp_dtype: the autocast dtype, or ``None``.
        tta: the test-time augmentation, a :class:`TTA`.
        desc: the progress bar's label.
        progress: show a progress bar.

    Returns:
        ``{"loss": mean loss over samples, **metric.compute()}``, over every process.
    """
    model.eval()
    layout = memory_format_of(model)
    loss_sum = torch.zeros((), device=device)
    seen = 0
    for x, y in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False,
                     dynamic_ncols=True):
        x, y = transform(x, y)
        x = x.contiguous(memory_format=layout)
        with autocast(device, amp_dtype):
            output = forward(model, x, tta.mode, tta.scales)
            loss = criterion(output, y)
        loss_sum += loss.float() * x.shape[0]
        seen += x.shape[0]
        metric.update(output, y)
    loss_total, seen = _sums(loss_sum, seen, device=device)
    return {"loss": loss_total / max(seen, 1), **metric.compute()}


@torch.inference_mode()
def predict(model, inputs, *, batch_size, transform, device, amp_dtype=None, tta=TTA(), keep=None, desc="predict",
            progress=True):
    """Run the model over every sample of ``inputs``, ``batch_size`` at a time.

    When the GPU runs out of memory the batch size halves (with a warning) and the batch is run
    again, so grading inference fits a smaller GPU than the one it was tuned on. A compiled model
    works too: the new batch size is compiled anew, and an out-of-memory error raised inside the
    compiler (which wraps it in an error of its own) is recognised by its cause.

    Args:
        model: the network, already on ``device`` (batches take the memory format of its weights).
        inputs: a tensor (N, ...) of raw inputs, on ``device`` or in (pinned) host memory.
        batch_size: samples per forward pass to start with.
        transform: ``(x, None) -> (x, None)`` (normalisation).
        keep: ``keep(output) -> tensor or tuple of tensors``, what to keep of each batch's output
            (the class map rather than the logits, say); the output itself by default.
        device, amp_dtype, tta, desc, progress: as in :func:`evaluate`.

    Returns:
        What ``keep`` returns, concatenated over batches, on the CPU.

    Raises:
        UserError: the GPU runs out of memory even one sample at a time.
    """
    model.eval()
    keep = keep or (lambda output: output)
    layout = memory_format_of(model)
    parts, done = [], 0
    with tqdm(total=len(inputs), desc=desc, unit="img", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        while done < len(inputs):
            x = inputs[done: done + batch_size].to(device, non_blocking=True)
            try:
                with autocast(device, amp_dtype):
                    batch = transform(x, None)[0].contiguous(memory_format=layout)
                    kept = keep(forward(model, batch, tta.mode, tta.scales))
            except Exception as e:  # torch.compile wraps an out-of-memory error in errors of its own
                if not out_of_memory(e):
                    raise
                if batch_size == 1:
                    raise UserError(f"out of GPU memory on {device} even at --batch-size 1") from None
                kept = None
            if kept is None:  # outside the except block, so the failed batch's memory is free
                batch_size //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(f"out of GPU memory: retrying with --batch-size {batch_size}")
                continue
            parts.append(kept if isinstance(kept, tuple) else (kept,))
            done += len(x)
            bar.update(len(x))
    out = tuple(torch.cat(p).cpu() for p in zip(*parts))
    return out if len(out) > 1 else out[0]


def segment(model, images, *, transform, batch_size, device, amp_dtype=None, tta=TTA(), progress=True):
    """Class maps for a list of images of any sizes: (H, W) uint8 arrays, one per image.

    Images of the same size are predicted together by :func:`predict`; ``transform`` may pad
    them (to the model's output stride, say), and each map is cropped back to its image's size.

    Args:
        model: a segmenter returning ``{"out": logits (B, C, H, W), ...}``.
        images: uint8 tensors (3, H, W).
        transform, batch_size, device, amp_dtype, tta, progress: as in :func:`predict`.
    """
    by_size = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
    results = [None] * len(images)
    for (h, w), indices in by_size.items():
        stack = torch.stack([images[i] for i in indices]).to(device)
        classes = predict(model, stack, batch_size=batch_size, transform=transform, device=device,
                          amp_dtype=amp_dtype, tta=tta, desc=f"segment {w}x{h}",
                          progress=progress, keep=lambda out: out["out"][..., :h, :w].argmax(1).to(torch.uint8))
        for i, c in zip(indices, classes):
            results[i] = c.numpy()
    return results
