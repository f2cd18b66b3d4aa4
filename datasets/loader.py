"""Batches drawn from in-memory tensors by index lookups, no DataLoader.

Tensors on the compute device (Problem 1's images; Problem 2's tiles on a GPU with room for
them) give batches there. Tensors in host memory (Problem 2's tiles otherwise) give batches
gathered there, pinned, and copied to the device without blocking.

With several processes (``rank`` of ``world_size``) a shuffled pass still draws one permutation
from the shared generator; each global batch of ``batch_size`` is split into ``world_size``
near-equal shares and a process yields its own. An ordered pass (evaluation) gives each process
one contiguous share of the samples, every sample exactly once.
"""
import copy
import itertools

import torch


def fits_on(device, nbytes, fraction=0.15):
    """True when ``nbytes`` of data take at most ``fraction`` of ``device``'s free memory.

    Always False off CUDA: host memory is where the data already is.
    """
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


def count_batches(n, batch_size, world_size=1, drop_small=False):
    """Batches in a shuffled pass over ``n`` samples (the same on every process).

    With ``drop_small`` a last batch that cannot give each process 2 samples is dropped.
    """
    count = -(-n // batch_size)
    if drop_small and 0 < n % batch_size < 2 * world_size and count > 1:
        count -= 1
    return count


def share(n, rank, world_size):
    """The ``[start, stop)`` of ``rank``'s share when ``n`` items split into ``world_size`` parts."""
    return rank * n // world_size, (rank + 1) * n // world_size


class TensorBatches:
    """Iterate ``(x[idx], y[idx])`` batches over in-memory tensors.

    Args:
        inputs: tensor (N, ...), on the compute device.
        targets: tensor (N, ...) or ``None``.
        batch_size: samples per batch (the global batch, over every process).
        generator: a CPU ``torch.Generator`` to shuffle with (a fresh permutation each
            ``__iter__``), or ``None`` to keep the order and every sample (evaluation).
        drop_small: drop a last batch too small to give each process 2 samples (BatchNorm
            cannot train on one).
        device: where batches go; ``None`` keeps them where the tensors are.
        rank, world_size: this process's share (see the module docstring).
    """

    def __init__(self, inputs, targets, batch_size, *, generator=None, drop_small=False, device=None,
                 rank=0, world_size=1):
        self.inputs = inputs
        self.targets = targets
        self.batch_size = batch_size
        self.generator = generator
        self.device = inputs.device if device is None else torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.start = 0
        n = len(inputs)
        if generator is None:
            start, stop = share(n, rank, world_size)
            self._range = (start, stop)
            self._len = -(-(stop - start) // batch_size)
        else:
            self._len = count_batches(n, batch_size, world_size, drop_small)

    def __len__(self):
        """The number of batches of the whole pass (also when it starts after some)."""
        return self._len

    def from_step(self, step):
        """The same pass without its first ``step`` batches (an interrupted epoch, resumed).

        The permutation is drawn as usual and the skipped batches are never gathered.
        """
        other = copy.copy(self)
        other.start = step
        return other

    def _move(self, t):
        if t is None or t.device == self.device:
            return t
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _indices(self):
        if self.generator is None:
            start, stop = self._range
            for i in range(start, stop, self.batch_size):
                yield slice(i, min(i + self.batch_size, stop))
            return
        # One copy of the permutation to the tensors' device per pass, none per batch.
        perm = torch.randperm(len(self.inputs), generator=self.generator).to(self.inputs.device)
        for batch in perm[: self._len * self.batch_size].split(self.batch_size):
            start, stop = share(len(batch), self.rank, self.world_size)
            yield batch[start:stop]

    def __iter__(self):
        for idx in itertools.islice(self._indices(), self.start, None):
            targets = None if self.targets is None else self.targets[idx]
            yield self._move(self.inputs[idx]), self._move(targets)
