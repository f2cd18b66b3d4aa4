"""Optimisers, their parameter groups, per-iteration learning-rate schedules, the update step, and an
exponential moving average of the weights."""
import math
import warnings

import torch
from timm.utils import ModelEmaV3

from utils.checkpoint import unwrap
from utils.errors import UserError

POLY_POWER = 0.9  # DeepLab's (Chen et al., TPAMI 2018)


def param_groups(model, *, weight_decay, norm_bias_decay=True, layer_decay=1.0, aux_lr_scale=1.0):
    """The optimiser's parameter groups: all parameters in one, or split by decay and depth.

    Args:
        model: the network.
        weight_decay: the decay of the weights that take one.
        norm_bias_decay: decay normalisation weights, biases and the tokens and embeddings a
            model names in ``no_weight_decay()`` too; False leaves them undecayed (the usual
            practice: decaying a scale or a shift only shrinks what BatchNorm/LayerNorm rescales).
        layer_decay: layer-wise learning-rate decay (Clark et al., ELECTRA, ICLR 2020; BEiT):
            the parameters of depth ``d`` of a model with ``L`` layers get the learning rate times
            ``layer_decay ** (L + 1 - d)``; the model says each parameter's depth through
            ``layer_id(name)`` and its ``num_layers``. 1 turns it off.
        aux_lr_scale: the learning rate of a segmenter's auxiliary head, times the others' (the
            model says which parameters are its through ``is_aux(name)``); torchvision's
            segmentation reference trains it at 10x. 1 turns it off.

    Returns:
        ``model.parameters()`` itself when nothing is split (the reference recipes), else a list
        of groups with their ``weight_decay`` and ``lr_scale``.

    Raises:
        UserError: ``layer_decay`` for a model that has no layers to decay over, ``aux_lr_scale``
            for one without an auxiliary head.
    """
    net = unwrap(model)
    if norm_bias_decay and layer_decay == 1.0 and aux_lr_scale == 1.0:
        return model.parameters()
    if aux_lr_scale != 1.0 and not hasattr(net, "is_aux"):
        raise UserError(f"--aux-lr-scale {aux_lr_scale}: {type(net).__name__} has no auxiliary head "
                        "(use --aux-lr-scale 1)")
    if layer_decay != 1.0 and not hasattr(net, "layer_id"):
        raise UserError(f"--layer-decay {layer_decay}: {type(net).__name__} has no layers to decay the "
                        "learning rate over (use --layer-decay 1)")
    skip = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    groups = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        undecayed = not norm_bias_decay and (param.ndim <= 1 or name in skip)
        depth = net.layer_id(name) if layer_decay != 1.0 else 0
        scale = layer_decay ** (net.num_layers + 1 - depth) if layer_decay != 1.0 else 1.0
        aux = aux_lr_scale != 1.0 and net.is_aux(name)
        scale *= aux_lr_scale if aux else 1.0
        key = (depth, aux, undecayed)
        groups.setdefault(key, {"params": [], "weight_decay": 0.0 if undecayed else weight_decay,
                                "lr_scale": scale})["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(name, params, *, lr, weight_decay, momentum, nesterov=False, fused=False):
    """``sgd`` or ``adamw`` over ``params`` (tensors, or groups with an ``lr_scale`` each that
    multiplies ``lr``); ``fused`` (CUDA) updates every tensor in one kernel."""
    # fused=None lets PyTorch pick its default (foreach) where fused kernels do not apply.
    fused = fused or None
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**group, "lr": lr * group.get("lr_scale", 1.0)} for group in params]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                               fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimiser {name!r}")


def build_scheduler(name, optimizer, *, total_steps, warmup_steps=0):
    """A scheduler stepped once per iteration over ``total_steps`` iterations.

    ``constant`` keeps the learning rate (the reference recipes); ``cosine`` anneals it to zero;
    ``poly`` decays it as ``(1 - t) ** 0.9``; both rise linearly from 0 over ``warmup_steps``
    first. ``onecycle`` is PyTorch's OneCycleLR with its defaults (its own warm-up), except that
    it does not cycle momentum (the reference code's silent momentum change is a known defect).
    Each parameter group keeps its own ratio to the others (layer-wise decay). Cosine and poly are
    one ``LambdaLR`` with or without a warm-up, so a resume that changes ``--epochs`` (and with it
    the number of warm-up steps) loads the state it saved into a scheduler of the same kind.
    """
    total_steps = max(total_steps, 1)
    if name == "constant" and not warmup_steps:
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "onecycle":
        if warmup_steps:
            raise UserError("--warmup: onecycle has its own warm-up (use --warmup 0, or --sched cosine or poly)")
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps, cycle_momentum=False)
    if name not in ("constant", "cosine", "poly"):
        raise ValueError(f"unknown schedule {name!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_factor(name, step, total_steps=total_steps, warmup_steps=warmup_steps))


def warmup_factor(name, step, *, total_steps, warmup_steps):
    """The learning rate's factor at ``step``: linear from 0 over ``warmup_steps`` (reaching 1 at
    the last warm-up step), then constant, cosine or poly decay to 0 over the remaining steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if name == "poly":
        return max(1.0 - t, 0.0) ** POLY_POWER
    return 1.0


class Updater:
    """One optimisation step: backward (through the gradient scaler under float16), the optimiser's
    step, the schedule's, and the update of the weights' moving average; and the state of all four
    for a checkpoint.

    Args:
        optimizer: the optimiser.
        scheduler: a per-iteration learning-rate scheduler.
        scaler: a ``torch.amp.GradScaler`` (float16 autocast), or ``None``.
        ema: a :class:`WeightAverage` of the model, or ``None``.
        epochs, steps_per_epoch: the run's length the schedule was laid out for.
    """

    def __init__(self, optimizer, scheduler, scaler=None, ema=None, *, epochs, steps_per_epoch):
        self.optimizer, self.scheduler, self.scaler, self.ema = optimizer, scheduler, scaler, ema
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch

    @classmethod
    def from_flags(cls, args, model, *, steps_per_epoch, device, amp_dtype):
        """The updater of ``model`` for a run's ``--opt``, ``--lr``, ``--weight-decay``,
        ``--momentum``, ``--nesterov``, ``--norm-bias-decay``, ``--layer-decay``, ``--aux-lr-scale``,
        ``--sched``, ``--warmup``, ``--ema`` and ``--epochs``; fused kernels on CUDA, a gradient
        scaler under float16."""
        params = param_groups(model, weight_decay=args.weight_decay,
                              norm_bias_decay=getattr(args, "norm_bias_decay", True),
                              layer_decay=getattr(args, "layer_decay", 1.0),
                              aux_lr_scale=getattr(args, "aux_lr_scale", 1.0))
        optimizer = build_optimizer(args.opt, params, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, nesterov=getattr(args, "nesterov", False),
                                    fused=device.type == "cuda")
        total = args.epochs * steps_per_epoch
        scheduler = build_scheduler(args.sched, optimizer, total_steps=total,
                                    warmup_steps=round(getattr(args, "warmup", 0.0) * total))
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        decay = getattr(args, "ema", 0.0) or 0.0
        ema = WeightAverage(model, decay) if decay else None
        return cls(optimizer, scheduler, scaler, ema, epochs=args.epochs, steps_per_epoch=steps_per_epoch)

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
        if self.ema is not None:
            # The schedule's count is the run's step count, and it survives a resume.
            self.ema.update(self.scheduler.last_epoch)
        return skipped

    def state_dict(self):
        """``{"optimizer", "scheduler", "scaler", "ema"}``, as a checkpoint holds them (``ema``: the
        averaged weights on the CPU, or ``None``)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None}

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
        if self.ema is not None:
            # A run that turns --ema on at resume averages from the weights it resumes with.
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema.restart()


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak & Juditsky 1992), for validation,
    ``best.pth`` and grading; timm's ``ModelEmaV3`` does the averaging.

    After step ``t`` the average moves ``1 - d_t`` of the way to the weights, with
    ``d_t = min(decay, (t - 1) / (t + 19))`` (timm's warm-up with gamma 20 and power 1; ``d_1 = 0``, a
    copy): its horizon ``1 / (1 - d_t)`` is about a twentieth of the steps taken, so the average
    spans the last 5% of a run of any length (an 80-step proxy as well as a 300-epoch run), until
    ``decay`` caps it (``1 / (1 - decay)`` steps). timm's default (power 2/3) spans 23% of an
    80-step run, a tenth 10%: both lagged the digits proxy's fast last epochs (docs/RECIPES.md).
    Floating-point buffers (BatchNorm's running statistics) are averaged too; integer ones are
    copied.

    Args:
        model: the network (wrapped or not); its bare module is averaged.
        decay: the cap of the per-step decay, in (0, 1).
    """

    def __init__(self, model, decay):
        self.model = unwrap(model)
        self.decay = decay
        self.average = ModelEmaV3(self.model, decay=decay, use_warmup=True, warmup_gamma=20.0, warmup_power=1.0)
        self.average.module.requires_grad_(False)

    @property
    def module(self):
        """The averaged network (what validation runs)."""
        return self.average.module

    def update(self, step):
        """Move the average towards the weights after the run's ``step``-th step (from 1)."""
        self.average.update(self.model, step=step)

    def restart(self):
        """Start the average anew from the current weights."""
        self.average.set(self.model)

    def state_dict(self):
        """The averaged weights, on the CPU, keyed as the model's own."""
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state):
        """Continue from :meth:`state_dict`."""
        self.module.load_state_dict(state)
