"""Optimisers, their parameter groups, per-iteration learning-rate schedules, the update step, and an
exponential moving average of the weights.

What is the library's: the parameter groups (no decay on norms, biases and a model's
``no_weight_decay()`` names; layer-wise lr decay over a model's ``group_matcher``) are timm's
``param_groups_weight_decay`` / ``param_groups_layer_decay``; the optimisers are ``torch.optim``'s
SGD and AdamW; the schedules are ``torch.optim.lr_scheduler``'s (LinearLR warm-up, then
CosineAnnealingLR, PolynomialLR or ConstantLR, joined by SequentialLR; OneCycleLR); the moving
average is timm's ``ModelEmaV3``. What stays ours, because neither library does it: the auxiliary
head's learning-rate factor (``--aux-lr-scale``), and the resume of a schedule laid out for another
``--epochs``, which steps the new schedule to the saved step instead of loading a state it cannot
take. A flag a run does not have (``--layer-decay`` in Problem 2, say) takes the value its
declaration (:mod:`config.flags`) calls off.
"""
import math
import warnings

import timm.optim
import torch
from timm.utils import ModelEmaV3

from config.flags import BY_NAME
from utils.checkpoint import unwrap
from utils.errors import UserError

POLY_POWER = 0.9  # DeepLab's (Chen et al., TPAMI 2018)
# A scheduler's state entries that say where it is, not how it is laid out (its length, warm-up and
# base learning rates).
_PROGRESS = frozenset({"last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step"})


def param_groups(model, *, weight_decay, norm_bias_decay=True, layer_decay=1.0, aux_lr_scale=1.0):
    """The optimiser's parameter groups: all parameters in one, or split by decay and depth.

    timm's optimizer factory makes the groups (``timm.optim.param_groups_layer_decay`` when
    ``layer_decay`` is on, else ``param_groups_weight_decay``); the auxiliary head's factor is ours
    (timm has no such option), applied by splitting each group into its main and auxiliary parts,
    in timm's order.

    Args:
        model: the network.
        weight_decay: the decay of the weights that take one.
        norm_bias_decay: decay normalisation weights, biases and the tokens and embeddings a
            model names in ``no_weight_decay()`` too; False leaves them undecayed (the usual
            practice: decaying a scale or a shift only shrinks what BatchNorm/LayerNorm rescales).
        layer_decay: layer-wise learning-rate decay (Clark et al., ELECTRA, ICLR 2020; BEiT):
            the parameters of depth ``d`` of a model with ``L`` layers get the learning rate times
            ``layer_decay ** (L + 1 - d)``; the model's timm ``group_matcher()`` says each
            parameter's depth (the embeddings 0, block ``i`` ``i + 1``, the head ``L + 1``).
            1 turns it off.
        aux_lr_scale: the learning rate of a segmenter's auxiliary head, times the others' (the
            model says which parameters are its through ``is_aux(name)``); torchvision's
            segmentation reference trains it at 10x. 1 turns it off.

    Returns:
        The parameters in one list, in ``model.parameters()`` order, when nothing is split (the
        reference recipes), else a list of groups with their ``weight_decay`` and ``lr_scale``.
        Either way only the parameters that require a gradient: a frozen one (``--fixed-upsampling``)
        never reaches the optimiser, as timm's groups leave it out too.

    Raises:
        UserError: ``layer_decay`` for a model that has no layers to decay over, ``aux_lr_scale``
            for one without an auxiliary head.
    """
    net = unwrap(model)
    if norm_bias_decay and layer_decay == 1.0 and aux_lr_scale == 1.0:
        return [param for param in model.parameters() if param.requires_grad]
    if aux_lr_scale != 1.0 and not hasattr(net, "is_aux"):
        raise UserError(f"--aux-lr-scale {aux_lr_scale}: {type(net).__name__} has no auxiliary head "
                        "(use --aux-lr-scale 1)")
    if layer_decay != 1.0 and not hasattr(net, "group_matcher"):
        raise UserError(f"--layer-decay {layer_decay}: {type(net).__name__} has no layers to decay the "
                        "learning rate over (use --layer-decay 1)")
    skip = () if norm_bias_decay or not hasattr(net, "no_weight_decay") else tuple(net.no_weight_decay())
    # timm tells an undecayed group by its decay of 0 alone (and param_groups_weight_decay merges all
    # groups into one when the decay is 0), where this code's checkpoints hold decayed and undecayed
    # groups apart at any decay (the ablations with --weight-decay 0 and --no-norm-bias-decay): so it
    # is asked with a nominal decay of 1 in that case, and the real one is set after.
    kwargs = dict(weight_decay=weight_decay or 1.0, weight_decay_exclude_1d=not norm_bias_decay,
                  no_weight_decay_list=skip)
    if layer_decay != 1.0:
        groups = timm.optim.param_groups_layer_decay(net, layer_decay=layer_decay, **kwargs)
    else:
        groups = timm.optim.param_groups_weight_decay(net, **kwargs)
    names = {id(param): name for name, param in net.named_parameters()}
    split = []
    for group in groups:
        undecayed = group["weight_decay"] == 0.0
        scale = group.get("lr_scale", 1.0)
        aux = [aux_lr_scale != 1.0 and net.is_aux(names[id(param)]) for param in group["params"]]
        for in_aux in (False, True):
            params = [param for param, a in zip(group["params"], aux) if a == in_aux]
            if params:
                split.append({"params": params, "weight_decay": 0.0 if undecayed else weight_decay,
                              "lr_scale": scale * aux_lr_scale if in_aux else scale})
    return split


def build_optimizer(name, params, *, lr, weight_decay, momentum, nesterov=False, fused=False):
    """``torch.optim``'s SGD or AdamW over ``params``, built as before the groups came from timm (the
    reference recipes' single group is bit-identical); timm's ``create_optimizer_v2`` is not used:
    its ``sgd`` is Nesterov SGD, and it would rebuild the groups this module makes.

    Args:
        name: ``sgd`` or ``adamw``.
        params: tensors, or groups with an ``lr_scale`` each that multiplies ``lr``.
        lr, weight_decay, momentum, nesterov: the optimiser's (``momentum`` and ``nesterov``: SGD's).
        fused: update every tensor in one kernel (CUDA).
    """
    # fused=None lets PyTorch pick its default (foreach) where fused kernels do not apply.
    fused = fused or None
    params = list(params)
    if params and isinstance(params[0], dict):
        # torch's schedulers ignore lr_scale: each group starts at its own lr, which they then scale.
        params = [{**group, "lr": lr * group.get("lr_scale", 1.0)} for group in params]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                               fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimiser {name!r}")


def build_scheduler(name, optimizer, *, total_steps, warmup_steps=0):
    """A ``torch.optim.lr_scheduler`` scheduler stepped once per iteration over ``total_steps``.

    ``constant`` keeps the learning rate (ConstantLR; the reference recipes); ``cosine`` anneals it
    to zero (CosineAnnealingLR); ``poly`` decays it as ``(1 - t) ** 0.9`` (PolynomialLR). With
    ``warmup_steps``, a LinearLR warm-up comes first, joined to them by SequentialLR: the factor is
    ``(step + 1) / warmup_steps`` at step ``step``, 1 at the last warm-up step, and the decay starts
    at 1 at step ``warmup_steps`` over the ``total_steps - warmup_steps`` left. ``onecycle`` is
    OneCycleLR with its defaults (its own warm-up), except that it does not cycle momentum (the
    reference code's silent momentum change is a known defect). Each parameter group keeps its own
    ratio to the others (layer-wise decay, the auxiliary head).

    Args:
        name: ``constant``, ``cosine``, ``poly`` or ``onecycle``.
        optimizer: the optimiser, each group at its full learning rate.
        total_steps: the run's iterations.
        warmup_steps: the warm-up's iterations (0: none).

    Raises:
        UserError: a warm-up asked of ``onecycle``.
    """
    schedulers = torch.optim.lr_scheduler
    total_steps = max(total_steps, 1)
    if name == "onecycle":
        if warmup_steps:
            raise UserError("--warmup: onecycle has its own warm-up (use --warmup 0, or --sched cosine or poly)")
        return schedulers.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                     total_steps=total_steps, cycle_momentum=False)
    # At least one step, so that a warm-up as long as the run leaves no division by zero behind it.
    decay_steps = max(total_steps - warmup_steps, 1)
    if name == "constant":
        decay = schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif name == "cosine":
        decay = schedulers.CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=0.0)
    elif name == "poly":
        decay = schedulers.PolynomialLR(optimizer, total_iters=decay_steps, power=POLY_POWER)
    else:
        raise ValueError(f"unknown schedule {name!r}")
    if not warmup_steps:
        return decay  # no SequentialLR: a LinearLR of 0 steps would start at the factor 1 / 0
    # LinearLR's factor at step s is start + (1 - start) * s / total_iters: (s + 1) / warmup_steps.
    # SequentialLR sets the decay to its closed form at step 0 at the milestone: the factor 1.
    warmup = schedulers.LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0,
                                 total_iters=warmup_steps - 1)
    return schedulers.SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def _layout(state):
    """A scheduler state without its progress and base learning rates: how the schedule is laid out."""
    if isinstance(state, dict):
        return {key: _layout(value) for key, value in state.items() if key not in _PROGRESS}
    if isinstance(state, (list, tuple)):
        return [_layout(value) for value in state]
    return state


class Updater:
    """One optimisation step in its precision: the forward pass's autocast dtype, backward (through
    the gradient scaler under float16), the optimiser's step, the schedule's, and the update of the
    weights' moving average; and the state of all of them for a checkpoint.

    Args:
        optimizer: the optimiser.
        scheduler: a per-iteration learning-rate scheduler.
        scaler: a ``torch.amp.GradScaler`` (float16 autocast), or ``None``.
        ema: a :class:`WeightAverage` of the model, or ``None``.
        amp_dtype: the autocast dtype of the forward pass, or ``None`` for full precision.
        epochs, steps_per_epoch: the run's length the schedule was laid out for.
    """

    def __init__(self, optimizer, scheduler, scaler=None, ema=None, *, amp_dtype=None, epochs, steps_per_epoch):
        self.optimizer, self.scheduler, self.scaler, self.ema = optimizer, scheduler, scaler, ema
        self.amp_dtype = amp_dtype
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch

    @classmethod
    def from_flags(cls, args, model, *, steps_per_epoch, device, amp_dtype):
        """The updater of ``model`` for a run's ``--opt``, ``--lr``, ``--weight-decay``,
        ``--momentum``, ``--nesterov``, ``--norm-bias-decay``, ``--layer-decay``, ``--aux-lr-scale``,
        ``--sched``, ``--warmup``, ``--ema`` and ``--epochs`` (a flag the run's problem does not have
        takes its declared off value); fused kernels on CUDA, a gradient scaler under float16."""
        def flag(name):
            return getattr(args, name, BY_NAME[name].off)

        params = param_groups(model, weight_decay=args.weight_decay, norm_bias_decay=flag("norm_bias_decay"),
                              layer_decay=flag("layer_decay"), aux_lr_scale=flag("aux_lr_scale"))
        optimizer = build_optimizer(args.opt, params, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=flag("momentum"), nesterov=flag("nesterov"), fused=device.type == "cuda")
        total = args.epochs * steps_per_epoch
        scheduler = build_scheduler(args.sched, optimizer, total_steps=total,
                                    warmup_steps=round(flag("warmup") * total))
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        ema = WeightAverage(model, flag("ema")) if flag("ema") else None
        return cls(optimizer, scheduler, scaler, ema, amp_dtype=amp_dtype, epochs=args.epochs,
                   steps_per_epoch=steps_per_epoch)

    @property
    def lr(self):
        """The learning rate the next step takes: that of the groups at the full rate (a parameter
        group's ``lr_scale`` 1: the head under layer decay, the network beside its auxiliary head)."""
        groups = self.optimizer.param_groups
        return next((g["lr"] for g in groups if g.get("lr_scale", 1.0) == 1.0), groups[0]["lr"])

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
        """Continue from :meth:`state_dict`'s entries (a checkpoint's), into an updater as built.

        The optimiser's state brings the moments; the groups' settings (decay, momentum, the
        schedule's start) are this run's, from its flags, so that a resume at an epoch boundary with
        another ``--weight-decay`` or ``--momentum`` applies it. The saved schedule's state is loaded
        when this run's schedule is laid out as the saved one (same kind, length, warm-up and base
        learning rates). Otherwise (a resume with another ``--epochs``, ``--lr``, ``--sched`` or
        ``--warmup``) this run's schedule is stepped from its start to the saved step: ours, since
        torch's schedulers load only a state of their own kind and length. The steps take about
        16 us each (BEiT's 28 groups): a second for 60,000.

        Raises:
            UserError: a onecycle schedule would be stretched to another length (it raises once
                past the end it was laid out for).
        """
        saved = state["scheduler"]
        total = self.epochs * self.steps_per_epoch
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR) and saved.get("total_steps", total) != total:
            raise UserError(f"--epochs {self.epochs}: a onecycle schedule cannot be stretched on resume (this "
                            f"run's cycle is {saved['total_steps'] // self.steps_per_epoch} epochs); "
                            "start a new run")
        # This run's settings of each group (its flags', the schedule's start, this machine's
        # kernels), which loading the optimiser's state overwrites with the saved run's.
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        same = _layout(saved) == _layout(self.scheduler.state_dict())
        for group, ours in zip(self.optimizer.param_groups, settings):
            lr = group["lr"]
            group.update(ours)
            if same:
                group["lr"] = lr  # the saved step's, from which the loaded schedule goes on
        if same:
            self.scheduler.load_state_dict(saved)
        else:
            with warnings.catch_warnings():
                # The optimiser takes no step here, which PyTorch would warn about.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                for _ in range(saved["last_epoch"]):
                    self.scheduler.step()
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
    ``decay`` caps it (a horizon of ``1 / (1 - decay)`` steps), from step ``(1 + 19 decay) / (1 - decay)``
    on: 9,981 for 0.998, beyond every run the recipes make. timm's default (power 2/3) spans 23% of an
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
