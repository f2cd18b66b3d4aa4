"""Batches drawn from tensors that already sit on the device: index lookups, no DataLoader."""
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
    """

    def __init__(self, inputs, targets, batch_size, *, generator=None, drop_singleton=False):
        self.inputs = inputs
        self.targets = targets
        self.batch_size = batch_size
        self.generator = generator
        n = len(inputs)
        self._len = -(-n // batch_size)
        if drop_singleton and n % batch_size == 1 and n > 1:
            self._len -= 1

    def __len__(self):
        return self._len

    def __iter__(self):
        n = len(self.inputs)
        if self.generator is None:
            for i in range(self._len):
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield self.inputs[sl], (None if self.targets is None else self.targets[sl])
            return
        perm = torch.randperm(n, generator=self.generator).to(self.inputs.device, non_blocking=True)
        for idx in perm[: self._len * self.batch_size].split(self.batch_size):
            yield self.inputs[idx], (None if self.targets is None else self.targets[idx])
