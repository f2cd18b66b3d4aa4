"""The training and evaluation loops shared by both problems.

The loops know nothing of problems, models or flags: they take a model, a criterion, an
iterable of ``(inputs, targets)`` batches already on the device, a batch transform
(augmentation and normalisation, run on the device), and an optimiser or a metric. The same
loop body runs with mixed precision on or off, and with one process or several (sums over
samples are reduced over every process at the end, so the returned figures are global).
Validation predicts as grading does, through :mod:`inference` (test-time augmentation).
"""
import time

import torch
from tqdm import tqdm

from inference.tta import TTA, forward
from utils.args import MAX_SKIPPED_IN_A_ROW, bars_disabled
from utils.distributed import all_reduce_sum
from utils.errors import UserError
from utils.runtime import autocast, memory_format_of, peak_memory_gib


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
                    desc="train", progress=None):
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
        progress: show a progress bar (with the peak GPU memory on CUDA); None: on a terminal only.

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
    bar = tqdm(batches, desc=desc, unit="batch", disable=bars_disabled(progress), leave=False, dynamic_ncols=True,
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
             progress=None):
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
        progress: show a progress bar; None: on a terminal only.

    Returns:
        ``{"loss": mean loss over samples, **metric.compute()}``, over every process.
    """
    model.eval()
    layout = memory_format_of(model)
    loss_sum = torch.zeros((), device=device)
    seen = 0
    for x, y in tqdm(batches, desc=desc, unit="batch", disable=bars_disabled(progress), leave=False,
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


