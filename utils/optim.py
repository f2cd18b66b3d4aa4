"""Optimisers and per-iteration learning-rate schedules."""
import torch


def build_optimizer(name, params, *, lr, weight_decay, momentum, fused=False):
    """``sgd`` or ``adamw`` over ``params``; ``fused`` (CUDA) updates every tensor in one kernel."""
    # fused=None lets PyTorch pick its default (foreach) where fused kernels do not apply.
    fused = fused or None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimiser {name!r}")


def build_scheduler(name, optimizer, *, total_steps):
    """A scheduler stepped once per iteration over ``total_steps`` iterations.

    ``constant`` keeps the learning rate (the reference recipes); ``cosine`` anneals it to zero;
    ``onecycle`` is PyTorch's OneCycleLR with its defaults, except that it does not cycle
    momentum (the reference code's silent momentum change is a known defect).
    """
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total_steps, 1), cycle_momentum=False)
    raise ValueError(f"unknown schedule {name!r}")
