"""What the CUDA paths do, checked on the CPU: float16-style skipping of non-finite steps (a CPU
GradScaler), batches in the model's memory format, SyncBatchNorm, the --cache-dir barrier under
torchrun (2 gloo processes; several machines, as threads), the out-of-memory fallback of a compiled
model, CPU JPEG decoding for grading, and the device check script on a machine without CUDA."""
import json
import math
import runpy
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import datasets.p2
from datasets.folder import decode_jpegs
from datasets.p2 import load_pairs, load_tiles
from datasets.transforms import Compose
from models import get_model
import p1_train
import p2_train
from tests.conftest import CPU_FP32, REPO, run_script
from inference import predict
from training.engine import evaluate, train_one_epoch
from training.optim import Updater, build_optimizer, build_scheduler
from utils import distributed
from utils.args import MAX_SKIPPED_IN_A_ROW
from utils.errors import UserError
from utils.io import _umask
from utils.metrics import Accuracy
from utils.runtime import memory_format_of
from utils.runtime import out_of_memory

CPU = torch.device("cpu")


class Batches(list):
    """A list of ``(x, y)`` batches: the sized iterable the engine takes."""


def regression_batches(count, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batches((torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)) for _ in range(count))


class SpoilSteps(nn.Module):
    """Mean squared error, multiplied by infinity at the training steps (counted from 1) in
    ``bad``: the loss and every gradient of those steps are not finite, as under an fp16 overflow."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.step = set(bad), 0

    def forward(self, out, y):
        self.step += 1
        loss = nn.functional.mse_loss(out, y)
        return loss * math.inf if self.step in self.bad else loss


def make_updater(model, steps, scaler=None):
    optimizer = build_optimizer("sgd", model.parameters(), lr=0.1, weight_decay=0.0, momentum=0.0)
    return Updater(optimizer, build_scheduler("constant", optimizer, total_steps=steps), scaler,
                   epochs=1, steps_per_epoch=steps)


def train(batches, criterion, scaler=None, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    updater = make_updater(model, len(batches), scaler)
    result = train_one_epoch(model, criterion, updater, batches, transform=lambda x, y: (x, y), device=CPU,
                             progress=False)
    return model, updater, result


def test_a_scaler_skips_a_non_finite_step_and_leaves_it_out_of_the_sums():
    batches = regression_batches(4)
    model, updater, result = train(batches, SpoilSteps(bad={2}), torch.amp.GradScaler("cpu"))
    # The same run without the spoilt batch: the scaler's powers of two cancel exactly.
    ref_model, _, ref = train(Batches([batches[0], *batches[2:]]), SpoilSteps(bad=()))
    assert result["skipped"] == 1 and ref["skipped"] == 0
    assert result["samples"] == ref["samples"] == 12 and result["steps"] == 4 and result["complete"]
    assert result["loss_sum"] == ref["loss_sum"] and math.isfinite(result["loss"])
    assert torch.equal(model.weight, ref_model.weight) and torch.equal(model.bias, ref_model.bias)
    assert updater.scaler.get_scale() == 2.0**16 / 2  # halved once, for the one skipped step


def test_a_skipped_first_step_under_a_warm_up_schedule_warns_nothing_and_keeps_the_schedule():
    # The warm-up is torch's LinearLR inside a SequentialLR, whose first step after a skipped optimiser
    # step is the one PyTorch warns about.
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = build_optimizer("sgd", model.parameters(), lr=0.1, weight_decay=0.0, momentum=0.0)
    updater = Updater(optimizer, build_scheduler("cosine", optimizer, total_steps=4, warmup_steps=2),
                      torch.amp.GradScaler("cpu"), epochs=1, steps_per_epoch=4)
    lrs, skipped = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step, (x, y) in enumerate(regression_batches(4)):
            lrs.append(updater.lr)
            loss = nn.functional.mse_loss(model(x), y)
            skipped.append(bool(updater.step(loss * math.inf if step == 0 else loss)))
    assert skipped == [True, False, False, False] and lrs == pytest.approx([0.05, 0.1, 0.1, 0.05])


def test_scattered_non_finite_steps_go_on_and_many_in_a_row_stop_naming_the_limit():
    batches = regression_batches(40)
    _, _, result = train(batches, SpoilSteps(bad=range(2, 41, 2)), torch.amp.GradScaler("cpu"))
    assert result["skipped"] == 20 and result["samples"] == 80 and math.isfinite(result["loss"])

    with pytest.raises(UserError, match=f"training diverged: 36 steps in a row had a loss or gradients that are "
                                        f"not finite \\(float16 overflow is skipped, but {MAX_SKIPPED_IN_A_ROW} in "
                                        "a row stop the run; by step 40 of train\\); lower --lr"):
        train(batches, SpoilSteps(bad=range(5, 41)), torch.amp.GradScaler("cpu"))
    _, _, result = train(batches, SpoilSteps(bad=range(10, 10 + MAX_SKIPPED_IN_A_ROW - 1)), torch.amp.GradScaler("cpu"))
    assert result["skipped"] == MAX_SKIPPED_IN_A_ROW - 1  # one fewer than the limit goes on


def test_without_a_scaler_one_non_finite_step_stops_the_run():
    # The weights took that step: there is nothing to continue from.
    with pytest.raises(UserError, match=r"training diverged: the loss or the gradients are not finite "
                                        r"\(by step 6 of train\); lower --lr"):
        train(regression_batches(6), SpoilSteps(bad={3}))


def spoil_second_step_under_a_cpu_scaler(monkeypatch):
    """p1_train with a CPU GradScaler (fp16 autocast needs CUDA) and its 2nd training step's loss
    made infinite."""
    from_flags = Updater.from_flags.__func__

    def with_scaler(cls, *args, **kwargs):
        updater = from_flags(cls, *args, **kwargs)
        updater.scaler = torch.amp.GradScaler("cpu")
        return updater

    monkeypatch.setattr(Updater, "from_flags", classmethod(with_scaler))
    calls = []

    class Spoilt(nn.CrossEntropyLoss):
        def forward(self, out, y):
            loss = super().forward(out, y)
            if torch.is_grad_enabled():  # training, not validation
                calls.append(1)
                return loss * math.inf if len(calls) == 2 else loss
            return loss

    monkeypatch.setattr(p1_train.nn, "CrossEntropyLoss", Spoilt)


def test_skipped_steps_and_peak_memory_are_logged_per_epoch(p1_data, tmp_path, monkeypatch, capsys):
    spoil_second_step_under_a_cpu_scaler(monkeypatch)
    train_dir, val_dir = p1_data
    p1_train.main(p1_train.get_args_parser().parse_args([
        "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--output-dir", str(tmp_path), "--epochs", "1",
        "--batch-size", "16", *CPU_FP32, "--no-progress"]))
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (record["skipped_steps"], record["peak_memory_gib"]) == (1, None) and math.isfinite(record["train_loss"])
    (epoch_line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert epoch_line.endswith("img/s  1 skipped")


class RecordLayout(nn.Module):
    """A small convolutional classifier that records whether each input came in channels_last."""

    def __init__(self):
        super().__init__()
        self.conv, self.head, self.seen = nn.Conv2d(3, 4, 3), nn.Linear(4, 2), []

    def forward(self, x):
        self.seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.head(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_batches_reach_the_model_in_the_memory_format_of_its_weights(layout):
    torch.manual_seed(0)
    model = RecordLayout().to(memory_format=layout)
    assert memory_format_of(model) == layout
    g = torch.Generator().manual_seed(0)
    batches = Batches((torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(3))
    assert all(x.is_contiguous() for x, _ in batches)
    same = lambda x, y: (x, y)  # noqa: E731
    train_one_epoch(model, nn.CrossEntropyLoss(), make_updater(model, 3), batches, transform=same, device=CPU,
                    progress=False)
    evaluate(model, nn.CrossEntropyLoss(), batches, Accuracy(), transform=same, device=CPU, progress=False)
    predict(model, torch.cat([x for x, _ in batches]), batch_size=5, transform=same, device=CPU, progress=False)
    assert model.seen == [layout == torch.channels_last] * (3 + 3 + 3)


def test_a_training_run_gives_channels_last_batches_to_a_channels_last_model(p1_data, tmp_path, monkeypatch):
    # As place_model does on CUDA, here on the CPU: every convolution's input, in training and
    # validation, must arrive in channels_last.
    import training.setup

    seen = []

    def place_channels_last(model, device):
        model.to(device).to(memory_format=torch.channels_last)
        for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
            conv.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(
                memory_format=torch.channels_last) and not args[0].is_contiguous()))
        return model

    monkeypatch.setattr(training.setup, "place_model", place_channels_last)
    train_dir, val_dir = p1_data
    p1_train.main(p1_train.get_args_parser().parse_args([
        "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--output-dir", str(tmp_path), "--epochs", "1",
        "--batch-size", "16", *CPU_FP32, "--no-progress"]))
    # 10 convolutions; 3 training and 1 validation batch.
    assert len(seen) == 10 * 4 and all(seen)


def test_sync_batchnorm_converts_in_place_keeping_parameters_and_checkpoint_keys():
    torch.manual_seed(0)
    model = get_model("vgg13", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    params, keys = list(model.parameters()), list(model.state_dict())
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert distributed.sync_batchnorm(model) is model
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == bns == 10
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    # The optimiser built before still holds the parameters; checkpoints keep their keys.
    assert all(a is b for a, b in zip(params, model.parameters())) and len(params) == len(list(model.parameters()))
    assert list(model.state_dict()) == keys
    get_model("vgg13", num_classes=5).load_state_dict(model.state_dict())
    assert torch.equal(model(x), before)  # in evaluation SyncBatchNorm is a plain BatchNorm


TWO = distributed.Context(rank=0, world_size=2)
CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("flag, problem, batch, ctx, device, expected", [
    (None, "p2", 4, TWO, CUDA, True),  # DeepLabv3's batch of 4 on 2 GPUs: 2 tiles each
    (None, "p2", 14, TWO, CUDA, True),  # 7 each
    (None, "p2", 16, TWO, CUDA, False),  # 8 each
    (None, "p1", 4, TWO, CUDA, False),  # Problem 1 only when asked
    (True, "p1", 128, TWO, CUDA, True),
    (False, "p2", 4, TWO, CUDA, False),
    (None, "p2", 4, TWO, CPU, False),  # SyncBatchNorm trains on GPUs only
    (True, "p2", 4, distributed.Context(), CUDA, False),  # one process: nothing to synchronise
])
def test_sync_bn_default_and_flag(flag, problem, batch, ctx, device, expected):
    assert distributed.resolve_sync_bn(flag, problem=problem, batch_size=batch, ctx=ctx, device=device) is expected


def test_sync_bn_is_refused_off_cuda_under_torchrun_and_explained_in_help():
    with pytest.raises(UserError, match=r"^--sync-bn: SyncBatchNorm trains on GPUs only \(this run is on cpu\); "
                                        r"drop --sync-bn$"):
        distributed.resolve_sync_bn(True, problem="p2", batch_size=4, ctx=TWO, device=CPU)
    text = " ".join(p2_train.get_args_parser().format_help().split())
    assert ("--sync-bn, --no-sync-bn under torchrun on GPUs, BatchNorm normalises over the whole global batch "
            "(SyncBatchNorm) instead of each process's share (default: on for Problem 2 when each process's share "
            "of --batch-size is under 8, off otherwise; or the resumed run's)") in text


CACHE_DRIVER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import numpy as np
import datasets.p2 as p2
import p2_train

rank, log = os.environ["RANK"], Path({log!r})
def note(what):
    with open(log / f"rank{{rank}}.log", "a") as f:
        f.write(what + "\\n")
save, load, decode = np.save, np.load, p2._decode_pair
np.save = lambda f, array: (note("write"), save(f, array))
np.load = lambda path, **kw: (note("map"), load(path, **kw))[1]
def slow_decode(tile, size):
    if rank == "0":
        time.sleep(0.05)  # without the barrier, rank 1 would find no cache and write its own
    return decode(tile, size)
p2._decode_pair = slow_decode
def loaded(device, nbytes):
    note("loaded")
    raise SystemExit(0)  # the data is what this test is about
p2_train.fits_on = loaded
p2_train.main(p2_train.get_args_parser().parse_args(sys.argv[1:]))
"""


def test_under_torchrun_rank_0_builds_the_cache_and_the_others_map_it(p2_data, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(CACHE_DRIVER.format(repo=str(REPO), log=str(log)))
    proc = run_script(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", driver,
                      "--train-dir", p2_data[0], "--val-dir", p2_data[1], "--output-dir", tmp_path / "run",
                      "--tile-size", "64", "--cache-dir", tmp_path / "cache", *CPU_FP32, "--no-progress",
                      env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Two folders, images and masks each: rank 0 writes 4 files, rank 1 maps those 4.
    assert (log / "rank0.log").read_text().split() == ["write"] * 4 + ["loaded"]
    assert (log / "rank1.log").read_text().split() == ["map"] * 4 + ["loaded"]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4


@pytest.mark.parametrize("shared", [True, False], ids=["one-shared-folder", "a-folder-per-machine"])
def test_on_several_machines_each_ones_first_process_writes_the_cache_and_its_others_map_it(
        p2_data, tmp_path, monkeypatch, shared):
    # Two machines of two processes each, played by four threads; one barrier over the four stands
    # for the process group's. Machines need not share a filesystem, so each one's LOCAL_RANK 0
    # writes; where they do share it, both write the same files at once, which must be safe.
    decoded = load_pairs(p2_data[0], size=64)
    group = threading.Barrier(4, timeout=20)
    monkeypatch.setattr(distributed, "barrier", group.wait)
    writers = threading.Barrier(2, timeout=20)  # both writers find no cache before either writes one
    decode_all = datasets.p2.decode_all
    monkeypatch.setattr(datasets.p2, "decode_all", lambda *a, **kw: (writers.wait(), decode_all(*a, **kw))[1])
    events, lock = [], threading.Lock()
    save, load = np.save, np.load

    def note(what):
        with lock:
            events.append((threading.current_thread().name, what))

    monkeypatch.setattr(np, "save", lambda f, array: (note("write"), save(f, array))[1])
    monkeypatch.setattr(np, "load", lambda path, **kw: (note("map"), load(path, **kw))[1])
    _umask()  # read once per process by setting it: read it before four threads write files
    folders = [tmp_path / ("cache" if shared else f"cache{machine}") for machine in range(2)]
    loaded, failed = {}, []

    def process(rank):
        machine, local = divmod(rank, 2)
        try:
            with distributed.main_first(distributed.Context(rank, 4, local)):
                loaded[rank] = load_pairs(p2_data[0], size=64, cache_dir=folders[machine])
        except BaseException as e:  # noqa: BLE001 (reported by the test's thread)
            failed.append(e)
            group.abort()

    threads = [threading.Thread(target=process, args=(rank,), name=f"rank{rank}") for rank in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed, failed
    # Each machine's first process (ranks 0 and 2) wrote images and masks; the others mapped them,
    # and only after every writer was done.
    assert sorted(events[:4]) == [("rank0", "write")] * 2 + [("rank2", "write")] * 2
    assert sorted(events[4:]) == [("rank1", "map")] * 2 + [("rank3", "map")] * 2
    for folder in set(folders):  # the two files, whole; no temporary file left behind
        assert sorted(p.suffix for p in folder.iterdir() if not p.name.startswith(".")) == [".npy", ".npy"]
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    for tiles in loaded.values():
        assert torch.equal(tiles.images, decoded.images) and torch.equal(tiles.masks, decoded.masks)


def test_main_first_orders_nothing_alone():
    order = []
    with distributed.main_first(distributed.Context(), enabled=True):
        order.append("block")
    assert order == ["block"]


class OutOfMemoryInCompiler:
    """A torch.compile backend that runs out of memory compiling graphs for batches over 2, as
    Inductor may (the error then arrives wrapped in torch.compile's own)."""

    def __init__(self):
        self.sizes = []

    def __call__(self, gm, example_inputs):
        x = next(t for t in example_inputs if isinstance(t, torch.Tensor))
        self.sizes.append(int(x.shape[0]))
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return gm.forward


class Scores(nn.Module):
    def forward(self, x):
        return torch.stack([x[:, 0], x[:, 1], -x.sum(1)], 1)


def test_a_compiled_model_halves_its_batch_when_the_compiler_runs_out_of_memory():
    torch._dynamo.reset()
    inputs = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    backend = OutOfMemoryInCompiler()
    model = torch.compile(Scores(), backend=backend)
    with pytest.warns(UserWarning) as warned:
        out = predict(model, inputs, batch_size=8, transform=Compose([]), device=CPU, keep=lambda o: o.argmax(1),
                      progress=False)
    assert [str(w.message) for w in warned] == ["out of GPU memory: retrying with --batch-size 4",
                                                "out of GPU memory: retrying with --batch-size 2"]
    assert out.tolist() == Scores()(inputs).argmax(1).tolist() and len(set(out.tolist())) == 3
    assert backend.sizes[:2] == [7, 4] and max(backend.sizes[2:]) <= 2
    torch._dynamo.reset()


def test_only_out_of_memory_errors_are_retried():
    oom = torch.OutOfMemoryError("CUDA out of memory")
    try:
        raise RuntimeError("backend failed") from oom
    except RuntimeError as e:
        wrapped = e
    assert out_of_memory(oom) and out_of_memory(wrapped) and not out_of_memory(RuntimeError("shape mismatch"))

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict(Broken(), torch.zeros(4, 2), batch_size=4, transform=Compose([]), device=CPU, progress=False)


def test_grading_decodes_tiles_on_the_cpu_as_training_and_validation_do(p2_data, tmp_path):
    folder = p2_data[1]
    names, images = load_tiles(folder)
    pairs = load_pairs(folder, size=64)
    assert names == pairs.names and all(image.device.type == "cpu" for image in images)
    assert torch.equal(torch.stack(images), pairs.images)
    for name, image in zip(names, images):  # PIL's pixels
        with Image.open(folder / name) as im:
            assert torch.equal(image, torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
    # A CMYK JPEG (which nvJPEG would not decode) comes out in RGB like any other.
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    (image,) = decode_jpegs([tmp_path / "cmyk.jpg"])
    assert image.shape == (3, 8, 16) and image.dtype == torch.uint8
    assert image[:, 4, 8].tolist() == pytest.approx([255, 0, 0], abs=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the script on a machine without CUDA")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2():
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr == ("gpu_check.sh: no CUDA GPU on this machine "
                                                 "(torch.cuda.is_available() is False): nothing to check\n")


def test_train_step_times_the_training_loop_and_writes_json_lines(tmp_path, monkeypatch, capsys):
    out = tmp_path / "steps.jsonl"
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--model", "vgg13", "--batch-size", "2", "--steps", "1",
                                      "--warmup", "0", "--device", "cpu", "--settings", "plain", "channels_last",
                                      "fused", "--jsonl", str(out)])
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(str(REPO / "benchmarks" / "train_step.py"), run_name="__main__")
    assert ended.value.code == 0
    assert "  fused                                    n/a on cpu" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["setting"], r["amp"], r["peak_memory_gib"]) for r in records] == [("plain", "none", None),
                                                                                 ("channels_last", "none", None)]
    assert all(r["images_per_second"] > 0 and r["seconds"] > 0 for r in records)


@pytest.mark.parametrize("script, argv, said", [
    ("train_step.py", ["--steps", "0"], "--steps must be positive (got 0)"),
    ("train_step.py", ["--warmup", "-1"], "--warmup must be non-negative (got -1)"),
    ("p1_input_path.py", ["--batch-size", "0"], "--batch-size must be positive (got 0)"),
    ("p2_input_path.py", ["--workers", "-1"], "--workers must be non-negative (got -1)"),
    ("miou_evaluate.py", ["--size", "0"], "--size must be positive (got 0)"),
    ("augment_ops.py", ["--batch", "0"], "--batch must be positive (got 0)"),
    ("grading_inference.py", ["--images", "0"], "--images must be positive (got 0)")])
def test_every_benchmark_refuses_a_bad_number_in_one_line(script, argv, said, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(str(REPO / "benchmarks" / script), run_name="__main__")
    assert ended.value.code == 2 and capsys.readouterr().err == f"{script}: error: {said}\n"
