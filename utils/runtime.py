"""Device, memory layout, mixed precision, compilation, GPU memory figures and seeding."""
import contextlib
import logging
import warnings

import numpy as np
import torch
from torch import nn

from utils.distributed import local_rank
from utils.errors import UserError


def resolve_device(name):
    """Turn ``--device`` into a ``torch.device``; ``auto`` is CUDA when available.

    Under ``torchrun`` each process takes the GPU of its ``LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    device = torch.device("cuda", local_rank()) if name == "cuda" else torch.device(name)
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {device.index}: this machine has {torch.cuda.device_count()} GPU(s) "
                        "(lower torchrun's --nproc_per_node)")
    if device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def place_model(model, device):
    """Move ``model`` to ``device``; on CUDA also to channels_last, which cuDNN runs fastest."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def memory_format_of(model):
    """The memory format of ``model``'s convolution weights (channels_last after :func:`place_model`
    on CUDA): batches given in the same format reach cuDNN without a conversion.

    Args:
        model: a module (wrapped by DDP or ``torch.compile`` or not).
    """
    for p in model.parameters():
        # A 1x1 kernel is both contiguous and channels_last; the first other one decides.
        if p.dim() == 4 and not p.is_contiguous():
            channels_last = p.is_contiguous(memory_format=torch.channels_last)
            return torch.channels_last if channels_last else torch.contiguous_format
    return torch.contiguous_format


# What torch.compile raises when its backend cannot build code on this machine: no working C++
# compiler (CPU), generated C++ that does not fit the CPU capability ATen runs at, no Triton (CUDA).
# By type name: they live in private modules (torch._inductor.exc, torch._dynamo.exc).
_BUILD_ERRORS = ("InvalidCxxCompiler", "CppCompileError", "BackendCompilerFailed", "InductorError", "TritonMissing")
_WARNED = set()  # the fallback reasons already told: a run compiles two models (training, validation)


def _causes(error):
    """``error`` and the errors that caused it, outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def out_of_memory(error):
    """True when ``error`` is, or was caused by, running out of GPU memory: ``torch.compile``
    raises its own error (``BackendCompilerFailed``, ``InductorError``) with the original one as
    its cause."""
    return any(isinstance(e, torch.OutOfMemoryError) for e in _causes(error))


def cannot_build(error):
    """Why torch.compile could not build code here, in one line, or ``None`` for any other error."""
    built = [e for e in _causes(error) if type(e).__name__ in _BUILD_ERRORS]
    if not built:
        return None
    inner = built[-1]  # the innermost says most: InvalidCxxCompiler inside InductorError inside ...
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0][:150]}" if text else type(inner).__name__


class CompiledOrEager(nn.Module):
    """``torch.compile(model)``, or ``model`` itself once the compiler cannot build code on this
    machine (no C++ compiler on the CPU, no Triton on CUDA): then one warning names the cause and
    the fix, and every call runs eagerly. ``--compile`` only changes the speed, so a machine that
    cannot compile still trains and grades, with the same results, rather than stopping.

    Args:
        model: the module (bare, or wrapped by DDP); its parameters are this module's.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        # Not a submodule: the compiled wrapper holds the same parameters under other names.
        self.__dict__["compiled"] = torch.compile(model)
        self.fallback = None  # why it runs eagerly, once it does

    def forward(self, *args, **kwargs):
        if self.fallback is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:
                reason = None if out_of_memory(e) else cannot_build(e)
                if reason is None:
                    raise
                self.fallback = reason
                if reason not in _WARNED:
                    _WARNED.add(reason)
                    warnings.warn(f"--compile: torch.compile cannot build code on this machine ({reason}); running "
                                  f"eagerly, with the same results, slower ({_fix(reason, self.model)})")
        return self.model(*args, **kwargs)


def _fix(reason, model):
    """What would let torch.compile build code here, for the fallback's warning."""
    if reason.startswith("InvalidCxxCompiler"):
        return "to compile: install a C++ compiler (g++), or point CXX at one"
    if reason.startswith("CppCompileError"):
        return ("the compiler rejected the generated C++: an ATEN_CPU_CAPABILITY below the CPU's, or a compiler "
                "too old for this torch")
    if reason.startswith("TritonMissing") or any(p.is_cuda for p in model.parameters()):
        return "to compile on CUDA: install Triton (pip install triton) for this torch"
    return "to compile: check that a C++ compiler works (CXX)"


def compile_model(model):
    """``model`` through :class:`CompiledOrEager` (``--compile``)."""
    # Inductor's C++ toolchain set-up remarks on a machine without CUDA ("No CUDA runtime is found,
    # using CUDA_HOME=..."), which says nothing to a CPU run.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return CompiledOrEager(model)


def reset_peak_memory(device):
    """Start a new peak of GPU memory on ``device`` (nothing elsewhere)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device):
    """The most GPU memory tensors took on ``device`` since :func:`reset_peak_memory`, in GiB
    (``None`` off CUDA); reading it does not wait for the GPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}  # --amp's precisions


def native_bf16(device):
    """Whether ``device`` computes bfloat16 natively; where it only emulates it, bf16 autocast is
    slower than float32.

    CUDA: from Ampere on (GPUs before it, the course's 11 GB card among them, emulate it). CPU: an
    instruction set with bfloat16 arithmetic, which oneDNN's convolutions and matmuls use: AMX-BF16
    or AVX512-BF16 on x86 (Sapphire Rapids and later, Cooper Lake, Zen 4), BF16 on Arm.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(present is True and "bf16" in feature for feature, present in torch.cpu.get_capabilities().items())
    return False


def amp_choice(name, device):
    """``--amp`` on ``device`` as the precision it runs in.

    Returns:
        ``(precision, why)``: ``bf16``, ``fp16`` or ``off``, and for ``auto`` the reason for its
        choice (``""`` for a precision typed as such).

    Raises:
        UserError: ``fp16`` off CUDA.
    """
    why = ""
    if name == "auto":
        native = native_bf16(device)
        what = "GPU" if device.type == "cuda" else device.type.upper()
        name = "bf16" if native else "fp16" if device.type == "cuda" else "off"
        why = f"this {what} {'computes bfloat16 natively' if native else 'has no native bfloat16'}"
    if name == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16: float16 autocast needs CUDA (use --amp bf16 or off on the CPU)")
    return name, why


def resolve_amp(name, device):
    """Turn ``--amp`` into an autocast dtype (:func:`amp_choice`), or ``None`` for full precision."""
    return AMP_DTYPES[amp_choice(name, device)[0]]


def autocast(device, amp_dtype):
    """``torch.autocast`` for ``amp_dtype``, or a no-op context when it is ``None``."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def mix_seed(*parts):
    """One 63-bit seed from several integers (seed, epoch, rank), without collisions like seed+epoch."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


class EpochRNG:
    """The random streams of one epoch, derived from (seed, epoch, rank) alone.

    Shuffling and augmentation draw only from here, so a run resumed at an epoch boundary
    replays exactly the same batches and augmentations.

    Attributes:
        cpu: a CPU ``torch.Generator`` for the permutation: the same on every process (each
            takes its share of every batch) and every device.
        device: a ``torch.Generator`` on the training device (per-sample augmentation draws),
            this process's own.
        np: a NumPy ``Generator`` (per-batch scalars such as the mixup ratio), this process's own.
    """

    def __init__(self, seed, epoch, device, rank=0):
        base = mix_seed(seed, epoch, rank)
        self.cpu = torch.Generator().manual_seed(mix_seed(seed, epoch, 0))
        self.device = torch.Generator(device=device).manual_seed(base ^ 0x5DEECE66D)
        self.np = np.random.default_rng(base)

    def state(self):
        """The augmentation streams' states (the permutation is redrawn from the seed)."""
        return {"device": self.device.get_state(), "np": self.np.bit_generator.state}

    def load_state(self, state):
        """Continue the streams from :meth:`state` (an epoch resumed after some of its steps)."""
        self.device.set_state(state["device"].cpu())
        self.np.bit_generator.state = state["np"]


def seed_everything(seed):
    """Seed the global RNGs (weight init, dropout)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
