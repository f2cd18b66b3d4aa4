"""Batches drawn from in-memory tensors by index lookups, no DataLoader.

Problem 1's tensors sit on the compute device already; Problem 2's tiles stay in host memory and
each batch is gathered there, pinned, and copied to the device without blocking.
"""
import torch


class TensorBatches:
    """Iterate ``(x[idx], y[idx])`` batches over in-memory tensors.

    Args:
        inputs: tensor (N, ...), on the compute device.
        targets: tensor (N, ...) or ``None``.
        batch_size: samples per batch.
        generator: a CPU ``torch.Generator`` to shuffle with (a fresh permutation each
            ``__iter__``), or ``None`` to keep the order and every sample (evaluation).
        drop_singleton: drop a last batch of one sample (BatchNorm cannot train on it).
        device: where batches go; ``None`` keeps them where the tensors are.
    """

    def __init__(self, inputs, targets, batch_size, *, generator=None, drop_singleton=False, device=None):
        self.inputs = inputs
        self.targets = targets
        self.batch_size = batch_size
        self.generator = generator
        self.device = inputs.device if device is None else torch.device(device)
        n = len(inputs)
        self._len = -(-n // batch_size)
        if drop_singleton and n % batch_size == 1 and n > 1:
            self._len -= 1

    def __len__(self):
        return self._len

    def _move(self, t):
        if t is None or t.device == self.device:
            return t
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _indices(self):
        if self.generator is None:
            for i in range(self._len):
                yield slice(i * self.batch_size, (i + 1) * self.batch_size)
            return
        perm = torch.randperm(len(self.inputs), generator=self.generator).to(self.inputs.device)
        yield from perm[: self._len * self.batch_size].split(self.batch_size)

    def __iter__(self):
        for idx in self._indices():
            targets = None if self.targets is None else self.targets[idx]
            yield self._move(self.inputs[idx]), self._move(targets)
