"""The CUDA paths, on a CUDA GPU: training steps of every model in bf16 and fp16 (an injected
overflow skipped), channels_last batches, --compile, the resident-data paths, grading inference
against a CPU run, the out-of-memory fallback, a GPU checkpoint on the CPU, and 2 GPUs under
torchrun. On a machine without CUDA every test is skipped with a reason naming CUDA;
benchmarks/gpu_check.sh runs this file first.
"""
import argparse
import csv
import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

import p1_inference
import p1_train
import p2_inference
import p2_train
import training.setup
import training.trainer
from datasets.p1 import load_folder
from datasets.p2 import load_tiles, read_mask
from datasets.presets import p2_inference_transform
from datasets.transforms import Compose, Normalize
from models import get_model, list_models, load_trained
from tests.conftest import CPU_FP32, run_script
from inference import predict
from training.engine import train_one_epoch
from training.losses import SegmentationLoss
from training.optim import Updater
from utils.checkpoint import load_checkpoint
from utils.runtime import memory_format_of, peak_memory_gib, place_model, reset_peak_memory, resolve_amp, resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
CPU = torch.device("cpu")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def gpu():
    """The training device as a run resolves it (cuDNN autotuning and TF32 on, as training has them)."""
    return resolve_device("cuda")


def skip_without_native_bf16(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("needs a CUDA GPU with native bfloat16 (Ampere or later)")


class Batches(list):
    """A list of ``(x, y)`` batches: the sized iterable the engine takes."""


class Spoil(nn.Module):
    """``criterion``, its loss made infinite at the training steps (from 1) in ``bad``."""

    def __init__(self, criterion, bad):
        super().__init__()
        self.criterion, self.bad, self.step = criterion, set(bad), 0

    def forward(self, out, y):
        self.step += 1
        loss = self.criterion(out, y)
        return loss * math.inf if self.step in self.bad else loss


# Input size and classes of each model's training.
SHAPES = {"vgg13": (32, 50), "beit": (224, 50), "fcn32s": (128, 7), "deeplabv3": (128, 7)}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("name", list_models())
def test_training_steps_in_autocast_with_channels_last_batches(name, amp):
    skip_without_native_bf16(amp)
    device = gpu()
    size, classes = SHAPES[name]
    torch.manual_seed(0)
    model = place_model(get_model(name, num_classes=classes), device)
    assert memory_format_of(model) == torch.channels_last
    layouts = []
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda _, args: layouts.append(
        args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
    g = torch.Generator(device=device).manual_seed(0)
    target_shape = (2, size, size) if classes == 7 else (2,)
    batches = Batches((torch.randn(2, 3, size, size, device=device, generator=g),
                       torch.randint(0, classes, target_shape, device=device, generator=g)) for _ in range(6))
    criterion = SegmentationLoss("ce", aux_weight=1.0) if classes == 7 else nn.CrossEntropyLoss()
    amp_dtype = resolve_amp(amp, device)
    flags = argparse.Namespace(opt="sgd", lr=1e-3, weight_decay=0.0, momentum=0.9, sched="constant", epochs=1)
    updater = Updater.from_flags(flags, model.parameters(), steps_per_epoch=6, device=device, amp_dtype=amp_dtype)
    assert (updater.scaler is not None) == (amp == "fp16")
    if amp == "fp16":
        # A first scale no real gradient overflows, so the injected step is the one skipped.
        updater.scaler = torch.amp.GradScaler(device.type, init_scale=2.0**8)
        criterion = Spoil(criterion, bad={4})
    before = [p.detach().clone() for p in model.parameters()]
    reset_peak_memory(device)
    result = train_one_epoch(model, criterion, updater, batches, transform=lambda x, y: (x, y), device=device,
                             progress=False)
    skipped = 1 if amp == "fp16" else 0
    assert result["skipped"] == skipped and result["samples"] == 2 * (6 - skipped) and result["complete"]
    assert math.isfinite(result["loss"])
    if amp == "fp16":
        assert updater.scaler.get_scale() == 2.0**7  # halved once, for the injected overflow
    params = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before))
    assert layouts == [True] * 6
    assert peak_memory_gib(device) > 0


def p1_flags(p1_data, out, *extra):
    train, val = p1_data
    return p1_train.get_args_parser().parse_args([
        "--train-dir", str(train), "--val-dir", str(val), "--output-dir", str(out), "--epochs", "2",
        "--batch-size", "16", "--device", "cuda", "--no-progress", *extra])


def record_tasks(monkeypatch, script):
    """Record the Task each training run builds (its data's device, say)."""
    tasks = []

    class Recording(training.trainer.Trainer):
        def __init__(self, setup, task):
            tasks.append(task)
            super().__init__(setup, task)

    monkeypatch.setattr(script, "Trainer", Recording)
    return tasks


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compile"])
def test_a_p1_training_run_on_cuda_in_fp16(p1_data, tmp_path, monkeypatch, capsys, compile):
    tasks = record_tasks(monkeypatch, p1_train)
    layouts = []
    place = training.setup.place_model

    def place_and_watch(model, device):
        model = place(model, device)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_pre_hook(lambda _, args: layouts.append(
            args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
        return model

    if not compile:  # hooks under torch.compile are traced, not called per batch
        monkeypatch.setattr(training.setup, "place_model", place_and_watch)
    result = p1_train.main(p1_flags(p1_data, tmp_path, "--amp", "fp16", *(["--compile"] if compile else [])))
    # The images live on the GPU; batches are index lookups there.
    assert tasks[0].train_data[0].device.type == "cuda" and tasks[0].val_data[0].device.type == "cuda"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and result["epochs"] == 2
    for r in records:
        assert math.isfinite(r["train_loss"]) and 0 <= r["val_acc"] <= 1
        assert isinstance(r["skipped_steps"], int) and r["peak_memory_gib"] > 0
    assert all("GiB" in line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch "))
    if not compile:
        assert layouts and all(layouts)  # 3 training and 1 validation batch an epoch


def p2_flags(p2_data, out, *extra):
    return p2_train.get_args_parser().parse_args([
        "--train-dir", str(p2_data[0]), "--val-dir", str(p2_data[1]), "--output-dir", str(out),
        "--model", "deeplabv3", "--no-pretrained", "--tile-size", "64", "--epochs", "1", "--batch-size", "4",
        "--opt", "adamw", "--lr", "1e-4", "--sched", "constant", "--amp", "off", "--device", "cuda",
        "--no-progress", *extra])


def test_p2_tiles_train_alike_on_the_gpu_or_from_host_memory(p2_data, tmp_path, monkeypatch):
    tasks = record_tasks(monkeypatch, p2_train)
    p2_train.main(p2_flags(p2_data, tmp_path / "resident"))
    monkeypatch.setattr(p2_train, "fits_on", lambda device, nbytes: False)  # an 11 GB card's path
    p2_train.main(p2_flags(p2_data, tmp_path / "host"))
    assert [t.train_data[0].device.type for t in tasks] == ["cuda", "cpu"]
    resident, host = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()][0]
                      for run in ("resident", "host"))
    # The same batches and flips either way; only cuDNN's choice of kernels may differ.
    assert host["train_loss"] == pytest.approx(resident["train_loss"], rel=1e-3)
    assert host["val_loss"] == pytest.approx(resident["val_loss"], rel=1e-3)


def read_csv_labels(path):
    with open(path, newline="") as f:
        return [int(row["label"]) for row in csv.DictReader(f)]


def margins(logits, dim):
    """Top-1 minus top-2 logit: how far each prediction is from an argmax tie."""
    top = logits.topk(2, dim=dim).values
    return top.select(dim, 0) - top.select(dim, 1)


def assert_same_up_to_ties(ours, cpu, margin, tolerance):
    """``ours`` predicts what the CPU did wherever the CPU's top two logits are not within ``tolerance``."""
    differ = ours != cpu
    assert (margin[differ] <= tolerance).all(), (int(differ.sum()), float(margin[differ].max()))


@pytest.mark.parametrize("amp, tolerance", [("off", 1e-2), ("auto", 0.1)])
def test_grading_inference_on_cuda_predicts_what_the_cpu_does(p1_run, p1_data, p2_run, p2_data, tmp_path, amp,
                                                              tolerance):
    val = p1_data[1]
    labels = {}
    for device in ("cpu", "cuda"):
        args = p1_inference.get_args_parser().parse_args([
            "--checkpoint", str(p1_run / "best.pth"), "--device", device, "--amp", amp if device == "cuda" else "off",
            "--no-progress", str(val), str(tmp_path / f"{device}.csv")])
        p1_inference.main(args)
        labels[device] = torch.tensor(read_csv_labels(tmp_path / f"{device}.csv"))
    model, ckpt = load_trained(p1_run / "best.pth", CPU, problem="p1")
    logits = predict(model, load_folder(val, labeled=False).images, batch_size=64,
                     transform=Compose([Normalize(ckpt["mean"], ckpt["std"])]), device=CPU, progress=False)
    assert_same_up_to_ties(labels["cuda"], labels["cpu"], margins(logits, 1), tolerance * logits.abs().max())

    tiles = p2_data[1]
    masks = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"masks_{device}"
        p2_inference.main(p2_inference.get_args_parser().parse_args([
            "--checkpoint", str(p2_run / "best.pth"), "--device", device, "--amp", amp if device == "cuda" else "off",
            "--no-progress", str(tiles), str(out)]))
        masks[device] = torch.from_numpy(np.stack([read_mask(p) for p in sorted(out.glob("*.png"))]))
    model, ckpt = load_trained(p2_run / "best.pth", CPU, problem="p2")
    _, images = load_tiles(tiles)
    logits = predict(model, torch.stack(images), batch_size=4, transform=p2_inference_transform(
        mean=ckpt["mean"], std=ckpt["std"]), device=CPU, keep=lambda o: o["out"], progress=False)
    assert masks["cpu"].shape == (4, 64, 64)
    assert_same_up_to_ties(masks["cuda"], masks["cpu"], margins(logits, 1), tolerance * logits.abs().max())


class Wide(nn.Module):
    """One convolution so wide that each 512x512 sample's output takes ``share`` of the free GPU memory."""

    def __init__(self, share):
        super().__init__()
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        self.conv = nn.Conv2d(3, max(1, int(free * share / (512 * 512 * 4))), 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compile"])
def test_out_of_memory_halves_the_batch_until_it_fits(compile):
    device = gpu()
    torch.manual_seed(0)
    model = Wide(share=0.3).to(device).eval()  # 4 samples need more than the free memory, 2 fit
    runner = torch.compile(model) if compile else model
    inputs = torch.randn(6, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning) as warned:
        out = predict(runner, inputs, batch_size=8, transform=Compose([]), device=device, progress=False)
    assert [str(w.message) for w in warned if "out of GPU memory" in str(w.message)] == [
        "out of GPU memory: retrying with --batch-size 4", "out of GPU memory: retrying with --batch-size 2"]
    one_at_a_time = predict(model, inputs, batch_size=1, transform=Compose([]), device=device, progress=False)
    assert out.shape == one_at_a_time.shape == (6, model.conv.out_channels)
    torch.testing.assert_close(out, one_at_a_time, rtol=1e-2, atol=1e-4)
    del model, runner
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def gpu_run(p1_data, tmp_path_factory):
    """A 2-epoch fp16 VGG13 run on the GPU (its checkpoints hold a gradient scaler's state)."""
    out = tmp_path_factory.mktemp("gpu_run")
    p1_train.main(p1_flags(p1_data, out, "--amp", "fp16"))
    return out


def test_a_gpu_checkpoint_loads_predicts_and_resumes_on_a_cpu_only_machine(gpu_run, p1_data, tmp_path):
    ckpt = load_checkpoint(gpu_run / "last.pth")
    assert ckpt["scaler"] is not None and all(t.device.type == "cpu" for t in ckpt["model"].values())
    hidden = {"CUDA_VISIBLE_DEVICES": ""}
    proc = run_script("p1_inference.py", "--checkpoint", gpu_run / "best.pth", "--no-progress", p1_data[1],
                      tmp_path / "pred.csv", env=hidden)
    assert proc.returncode == 0, proc.stderr
    assert len(read_csv_labels(tmp_path / "pred.csv")) == 16
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pth", "metrics.jsonl", "args.json"):
        (run / name).write_bytes((gpu_run / name).read_bytes())
    proc = run_script("p1_train.py", "--resume", run / "last.pth", "--output-dir", run, "--epochs", "3",
                      *CPU_FP32, "--no-progress", env=hidden)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["peak_memory_gib"] is None


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_under_torchrun_sync_batchnorm_and_share_one_cache(p2_data, tmp_path):
    proc = run_script(*TORCHRUN, "p2_train.py", "--train-dir", p2_data[0], "--val-dir", p2_data[1],
                      "--output-dir", tmp_path / "run", "--model", "deeplabv3", "--no-pretrained", "--tile-size", "64",
                      "--epochs", "2", "--batch-size", "4", "--cache-dir", tmp_path / "cache", "--no-progress",
                      env={"OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 x cuda" in proc.stdout and "sync-bn; output" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(r["peak_memory_gib"] > 0 for r in records)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4
    # SyncBatchNorm keeps BatchNorm's keys: the checkpoint loads into the plain model.
    model, _ = load_trained(tmp_path / "run" / "last.pth", CPU, problem="p2")
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
