"""Optimisers, per-iteration learning-rate schedules, and the update step that drives them."""
import math
import warnings

import torch

from utils.errors import UserError


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


class Updater:
    """One optimisation step: backward (through the gradient scaler under float16), the optimiser's
    step, then the schedule's; and the state of all three for a checkpoint.

    Args:
        optimizer: the optimiser.
        scheduler: a per-iteration learning-rate scheduler.
        scaler: a ``torch.amp.GradScaler`` (float16 autocast), or ``None``.
        epochs, steps_per_epoch: the run's length the schedule was laid out for.
    """

    def __init__(self, optimizer, scheduler, scaler=None, *, epochs, steps_per_epoch):
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch

    @classmethod
    def from_flags(cls, args, params, *, steps_per_epoch, device, amp_dtype):
        """The updater of a run's ``--opt``, ``--lr``, ``--weight-decay``, ``--momentum``,
        ``--sched`` and ``--epochs``; fused kernels on CUDA, a gradient scaler under float16."""
        optimizer = build_optimizer(args.opt, params, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, fused=device.type == "cuda")
        scheduler = build_scheduler(args.sched, optimizer, total_steps=args.epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        return cls(optimizer, scheduler, scaler, epochs=args.epochs, steps_per_epoch=steps_per_epoch)

    @property
    def lr(self):
        """The learning rate the next step takes (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    @property
    def skips_nonfinite(self):
        """True when a step whose gradients are not finite is skipped (the float16 gradient
        scaler's work) rather than taken, spoiling the weights."""
        return self.scaler is not None

    def step(self, loss):
        """Backpropagate ``loss`` and take one step of the optimiser and of the schedule.

        Returns:
            Under a gradient scaler, a device bool tensor, True when the scaler skipped the
            optimiser's step because a gradient was not finite (float16 overflow; it then lowers
            its scale); ``None`` without one. Nothing here waits for the device.
        """
        self.optimizer.zero_grad(set_to_none=True)
        skipped = None
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            # The scaler's own verdict (any scaled gradient not finite) is private; the largest
            # absolute gradient is the same test, one read of the gradients, with no overflow
            # of its own (a 2-norm of scaled gradients can overflow where no gradient does).
            grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            skipped = ~torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with warnings.catch_warnings():
                # The schedule advances once per batch, skipped or not (so a resume finds it
                # where it was); PyTorch warns when a run's first step is a skipped one.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
        else:
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
        return skipped

    def state_dict(self):
        """``{"optimizer", "scheduler", "scaler"}``, as a checkpoint holds them."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state):
        """Continue from :meth:`state_dict`'s entries (a checkpoint's).

        Raises:
            UserError: a onecycle schedule would be stretched to another length (it raises once
                past the end it was laid out for).
        """
        fused = [group["fused"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, flag in zip(self.optimizer.param_groups, fused):
            group["fused"] = flag  # this machine's kernels, not those of the machine that saved it
        self.scheduler.load_state_dict(state["scheduler"])
        total = self.epochs * self.steps_per_epoch
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR) and self.scheduler.total_steps != total:
            raise UserError(f"--epochs {self.epochs}: a onecycle schedule cannot be stretched on resume (this "
                            f"run's cycle is {self.scheduler.total_steps // self.steps_per_epoch} epochs); "
                            "start a new run")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
