"""Several processes through ``torchrun``: the process group, model wrapping and exact sums.

One process is the default and costs nothing here: every helper is a no-op when the script was
not started by ``torchrun`` (or was started with one process). Under ``torchrun`` each process
joins the group (nccl on CUDA, gloo on the CPU), takes the GPU of its ``LOCAL_RANK``, and:

- trains on its share of each global batch (``--batch-size`` stays the global batch, so the
  recipes, the number of steps and a resume mean the same with any number of processes);
- validates its contiguous share of the validation set, every sample exactly once, and sums the
  counts of all processes, so metrics are exact over the whole set;
- prints, logs and writes the run folder only on rank 0.

Several machines (``torchrun --nnodes N``) are the same group over the network: ranks are global,
``LOCAL_RANK`` counts the processes of one machine, and only global rank 0 writes the run folder.
Files a process must read from disk (``--cache-dir``) are written by each machine's local rank 0
(:func:`main_first`), so they need no filesystem shared between machines.
"""
import atexit
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.errors import UserError


# A per-process share of the batch under this many samples gets SyncBatchNorm by default (Problem 2).
SYNC_BN_BELOW = 8


@dataclass(frozen=True)
class Context:
    """This process's place in the group: ``rank`` of ``world_size`` (0 of 1 alone), and
    ``local_rank`` among the processes of its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        """True on the one process that prints, logs and writes files."""
        return self.rank == 0

    @property
    def is_local_main(self):
        """True on the first process of each machine (the one that writes ``--cache-dir``)."""
        return self.local_rank == 0

    @property
    def distributed(self):
        """True when several processes train together."""
        return self.world_size > 1


def launched_world_size():
    """The number of processes ``torchrun`` started (1 when not started by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device):
    """Join ``torchrun``'s process group when there is one.

    Args:
        device: this process's ``torch.device`` (``cuda:<LOCAL_RANK>`` under torchrun on GPUs).

    Returns:
        The :class:`Context`.
    """
    if launched_world_size() <= 1:
        return Context()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        atexit.register(shutdown)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank())


def local_rank():
    """This process's GPU index under ``torchrun`` (0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def shutdown():
    """Leave the process group (if one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def check_batch_share(batch_size, ctx, flag="--batch-size"):
    """Refuse a global batch that leaves a process fewer than 2 samples (BatchNorm needs 2)."""
    if ctx.distributed and batch_size < 2 * ctx.world_size:
        raise UserError(f"{flag} {batch_size} is the global batch: it leaves each of the "
                        f"{ctx.world_size} processes fewer than 2 samples (use {flag} "
                        f">= {2 * ctx.world_size})")


def wrap(model, device, ctx, sync_bn=False):
    """``model`` inside DistributedDataParallel when there are several processes.

    Args:
        model: the bare network on ``device``.
        device: this process's device.
        ctx: this process's :class:`Context`.
        sync_bn: first make its BatchNorm layers SyncBatchNorm (:func:`sync_batchnorm`).
    """
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_batchnorm(model):
    """Turn ``model``'s BatchNorm layers into SyncBatchNorm, in place: in training they normalise
    over the whole global batch rather than each process's share (torchvision's segmentation
    reference does this always). SyncBatchNorm takes over the layers' parameters and buffers
    themselves, so an optimiser built on ``model`` before still updates them, and checkpoints
    keep the same keys; in evaluation it is a plain BatchNorm.

    Args:
        model: a module whose root is not itself a BatchNorm layer (it is changed in place).

    Returns:
        ``model``.
    """
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if converted is not model:
        raise ValueError("sync_batchnorm: the root module is a BatchNorm layer; it cannot change in place")
    return model


def resolve_sync_bn(flag, *, problem, batch_size, ctx, device):
    """Whether a run converts to SyncBatchNorm: ``--sync-bn`` as given, or by default on for
    Problem 2 under torchrun when each process's share of the batch is under 8 (DeepLabv3's
    batch of 4 on 2 GPUs would normalise over 2 tiles) and on CUDA, where SyncBatchNorm runs.

    Args:
        flag: ``--sync-bn`` (True, False, or None for the default).
        problem: ``"p1"`` or ``"p2"``.
        batch_size: the global batch.
        ctx: this process's :class:`Context`.
        device: this process's device.

    Raises:
        UserError: ``--sync-bn`` under torchrun off CUDA (PyTorch's SyncBatchNorm trains on GPUs only).
    """
    if not ctx.distributed:
        return False  # one process normalises over the whole batch already
    if flag and device.type != "cuda":
        raise UserError(f"--sync-bn: SyncBatchNorm trains on GPUs only (this run is on {device.type}); "
                        "drop --sync-bn")
    if flag is None:
        return problem == "p2" and device.type == "cuda" and batch_size // ctx.world_size < SYNC_BN_BELOW
    return flag


def broadcast_buffers(module, ctx):
    """Give every process rank 0's buffers (BatchNorm statistics).

    Each process updates its running statistics from its own samples; validation and the
    checkpoint both use rank 0's, so the validated model is the saved one.
    """
    if not ctx.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def all_reduce_sum(tensor):
    """The sum of ``tensor`` over every process (a copy; ``tensor`` itself when alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    # gloo reduces CPU tensors, nccl CUDA ones.
    where = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = tensor.detach().to(where, copy=True)
    dist.all_reduce(out)
    return out.to(tensor.device)


def barrier():
    """Wait for every process (a no-op alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first(ctx, enabled=True):
    """Run the block on each machine's first process (``LOCAL_RANK`` 0), then on the others.

    For work whose result is left on disk for the other processes (the ``--cache-dir`` files):
    on each machine one process writes them and the machine's others read them. One writer per
    machine, not rank 0 alone, because the machines of a ``torchrun --nnodes`` job need not
    share a filesystem; where they do, the writers of several machines write the same files at
    once, which must then be safe: each file written whole to a temporary name and renamed into
    place, with the same content (:func:`datasets.p2.load_pairs` does both). One barrier over
    all the processes orders them: every first process finishes the block before any other
    starts it. Alone, or when not ``enabled``, every process runs the block at once.

    Args:
        ctx: this process's :class:`Context`.
        enabled: whether to order the processes at all.
    """
    ordered = enabled and ctx.distributed
    if ordered and not ctx.is_local_main:
        barrier()
    yield
    if ordered and ctx.is_local_main:
        barrier()
