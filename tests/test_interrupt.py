"""Training survives interruption: SIGTERM/SIGINT save at a step boundary, SIGKILL loses nothing saved,
and a resumed run ends with exactly the weights of an uninterrupted one."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import p1_train
from tests.conftest import CPU_FP32, REPO, write_p1_folder
from training.trainer import StopOnSignal
from utils.checkpoint import load_checkpoint

EPOCHS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """15 steps an epoch at batch 8, so a signal usually lands inside an epoch."""
    root = tmp_path_factory.mktemp("interrupt_data")
    return write_p1_folder(root / "train_50", range(4), 30, seed=0), write_p1_folder(root / "val_50", range(4), 3, seed=1)


def flags(data, out, epochs=EPOCHS):
    train, val = data
    return ["--train-dir", str(train), "--val-dir", str(val), "--output-dir", str(out), "--epochs", str(epochs),
            "--batch-size", "8", *CPU_FP32, "--no-progress"]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run's folder."""
    out = tmp_path_factory.mktemp("reference")
    p1_train.main(p1_train.get_args_parser().parse_args(flags(data, out)))
    return out


def assert_same_run(out, reference):
    ours, ref = load_checkpoint(out / "last.pth"), load_checkpoint(reference / "last.pth")
    assert ours["epoch"] == ref["epoch"] == EPOCHS
    for name, tensor in ref["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref_lines = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["train_loss"], r["val_acc"]) for r in lines] == \
        [(r["epoch"], r["train_loss"], r["val_acc"]) for r in ref_lines]


def resume(out):
    p1_train.main(p1_train.get_args_parser().parse_args(["--resume", str(out / "last.pth"), "--no-progress"]))


def signal_at_question(monkeypatch, number, signum):
    """Make the training loop's ``number``-th "stop?" question find ``signum`` arrived."""
    calls = []

    def asked(self):
        calls.append(1)
        if len(calls) == number:
            self.signum = signum
        return self.signum is not None

    monkeypatch.setattr(StopOnSignal, "__call__", asked)


@pytest.mark.numeric
def test_stop_mid_epoch_saves_the_step_and_resumes_exactly(data, reference, tmp_path, monkeypatch):
    # The loop asks after each of epoch 1's first 14 steps and after the epoch: the 20th
    # question comes after step 5 of epoch 2.
    signal_at_question(monkeypatch, 20, signal.SIGTERM)
    out = tmp_path / "run"
    with pytest.raises(Exception, match=r"stopped by SIGTERM in epoch 2 after step 5 of 15; saved .*last.pth; "
                                        r"continue with: python3 p1_train.py --resume .*last.pth") as info:
        p1_train.main(p1_train.get_args_parser().parse_args(flags(data, out)))
    assert info.value.exit_code == 128 + signal.SIGTERM
    ckpt = load_checkpoint(out / "last.pth")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 5)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()
    with pytest.raises(Exception, match="stopped part-way through epoch 2 with batch_size 8; it continues only "
                                        "with the same batch_size"):
        p1_train.main(p1_train.get_args_parser().parse_args(
            ["--resume", str(out / "last.pth"), "--batch-size", "4", "--no-progress"]))
    resume(out)
    assert_same_run(out, reference)


def start_training(data, out):
    return subprocess.Popen([sys.executable, "p1_train.py", *flags(data, out)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_signal_saves_and_the_resumed_run_matches(data, reference, tmp_path):
    """SIGTERM to a real training process (SIGINT takes the same handler: both are checked in-process
    by test_a_signal_asks_for_a_stop_and_a_later_second_one_stops_at_once)."""
    sig = signal.SIGTERM
    out = tmp_path / "run"
    proc = start_training(data, out)
    wait_for(out / "last.pth", proc)  # after epoch 1: the signal lands in epoch 2
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")  # a very fast machine
    assert proc.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    # A stop is reported as a stop, not as an error.
    assert len(lines) == 1 and lines[0].startswith(f"p1_train.py: stopped by {signal.Signals(sig).name}"), stderr
    assert f"--resume {out / 'last.pth'}" in lines[0]
    load_checkpoint(out / "best.pth")
    resume(out)
    assert_same_run(out, reference)


def test_sigkill_at_a_random_moment_leaves_loadable_checkpoints(data, reference, tmp_path):
    out = tmp_path / "run"
    proc = start_training(data, out)
    wait_for(out / "last.pth", proc)
    time.sleep(random.uniform(0.0, 1.5))  # anywhere: a step, validation, a checkpoint write
    proc.kill()
    proc.communicate(timeout=60)
    for name in ("last.pth", "best.pth"):
        load_checkpoint(out / name)
    if load_checkpoint(out / "last.pth")["epoch"] < EPOCHS:
        resume(out)
    assert_same_run(out, reference)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_signal_asks_for_a_stop_and_a_later_second_one_stops_at_once(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # at once: a launcher forwarding the same request
        assert stop() and stop.name == "SIGTERM"
        monkeypatch.setattr("training.trainer.REPEAT_SECONDS", 0.0)
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.numeric
def test_p2_train_stopped_mid_epoch_resumes_to_the_same_weights(p2_data, p2_run, tmp_path, monkeypatch):
    import p2_train

    # p2_run's flags: 2 steps an epoch; the 3rd question comes after step 1 of epoch 2.
    signal_at_question(monkeypatch, 3, signal.SIGINT)
    out = tmp_path / "run"
    args = p2_train.get_args_parser().parse_args([
        "--model", "lraspp", "--train-dir", str(p2_data[0]), "--val-dir", str(p2_data[1]), "--output-dir", str(out),
        "--tile-size", "64", "--no-pretrained", "--epochs", "2", "--batch-size", "4",
        "--opt", "adamw", "--lr", "1e-4", *CPU_FP32, "--no-progress"])
    with pytest.raises(Exception, match="stopped by SIGINT in epoch 2 after step 1 of 2"):
        p2_train.main(args)
    monkeypatch.undo()
    p2_train.main(p2_train.get_args_parser().parse_args(["--resume", str(out / "last.pth"), "--no-progress"]))
    ours, ref = load_checkpoint(out / "last.pth"), load_checkpoint(p2_run / "last.pth")
    assert ours["epoch"] == ref["epoch"] == 2
    for name, tensor in ref["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    assert ours["metrics"]["train_loss"] == ref["metrics"]["train_loss"]
    assert ours["metrics"]["val_miou"] == ref["metrics"]["val_miou"]


def test_a_bf16_run_resumed_with_only_resume_and_epochs_stays_bf16(data, tmp_path, monkeypatch):
    """Flags left out on resume come from the checkpoint, --amp among them: the resumed run is
    the uninterrupted one, bit for bit. (One epoch: bfloat16 convolutions are slow on a CPU.)"""
    straight = tmp_path / "straight"
    p1_train.main(p1_train.get_args_parser().parse_args([*flags(data, straight, epochs=1), "--amp", "bf16"]))
    signal_at_question(monkeypatch, 5, signal.SIGINT)  # after step 5 of epoch 1
    out = tmp_path / "run"
    with pytest.raises(Exception, match="stopped by SIGINT in epoch 1 after step 5"):
        p1_train.main(p1_train.get_args_parser().parse_args([*flags(data, out, epochs=1), "--amp", "bf16"]))
    monkeypatch.undo()
    # Another precision would change the rest of the stopped epoch: refused, the run untouched.
    with pytest.raises(Exception, match="stopped part-way through epoch 1 with amp bf16; it continues only "
                                        "with the same amp"):
        p1_train.main(p1_train.get_args_parser().parse_args(
            ["--resume", str(out / "last.pth"), "--epochs", "1", "--amp", "off", "--no-progress"]))
    p1_train.main(p1_train.get_args_parser().parse_args(["--resume", str(out / "last.pth"), "--epochs", "1"]))
    ours, ref = load_checkpoint(out / "last.pth"), load_checkpoint(straight / "last.pth")
    assert ours["args"]["amp"] == "bf16" and ours["epoch"] == 1
    for name, tensor in ref["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    assert ours["metrics"]["train_loss"] == ref["metrics"]["train_loss"]


def test_a_ctrl_c_while_the_libraries_load_ends_the_script_without_a_traceback(tmp_path):
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "p1_inference.py", "--help"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while "utils.quiet_start" not in proc.stderr.readline():  # -X importtime reports each module as it loads
        assert proc.poll() is None, "the script ended before utils.quiet_start loaded"
    proc.send_signal(signal.SIGINT)  # torch is loading now, seconds before the parser exists
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT and "Traceback" not in stderr
