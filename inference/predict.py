"""Prediction over a whole set of inputs: batched, in inference mode, with the run's test-time
augmentation, the batch halved when the GPU runs out of memory; and segmentation of images of any
sizes into class maps."""
import warnings

import torch
from tqdm import tqdm

from inference.tta import TTA, forward
from utils.args import bars_disabled
from utils.errors import UserError
from utils.runtime import autocast, memory_format_of, out_of_memory


@torch.inference_mode()
def predict(model, inputs, *, batch_size, transform, device, amp_dtype=None, tta=TTA(), keep=None, desc="predict",
            progress=None):
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
    with tqdm(total=len(inputs), desc=desc, unit="img", disable=bars_disabled(progress), leave=False,
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


def segment(model, images, *, transform, batch_size, device, amp_dtype=None, tta=TTA(), progress=None):
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
