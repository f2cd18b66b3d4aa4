"""p1_train.py: learning, run-folder outputs, exact resume, and its refusals."""
import json
import os

import subprocess
import sys

import pytest
import torch

import p1_train
from config.flags import BY_NAME
from tests.conftest import CPU_FP32, assert_one_line_error, run_main, run_script
from utils.checkpoint import load_checkpoint
from utils.run_folder import RunFolder
from utils.errors import UserError


def train(p1_data, out, *extra):
    t, v = p1_data
    args = p1_train.get_args_parser().parse_args([
        "--train-dir", str(t), "--val-dir", str(v), "--output-dir", str(out), "--batch-size", "16",
        *CPU_FP32, "--no-progress", *map(str, extra)])
    return p1_train.main(args)


def test_run_folder_contents(p1_run):
    names = sorted(p.name for p in p1_run.iterdir())
    assert names == ["args.json", "best.pth", "epoch_001.pth", "epoch_002.pth", "epoch_004.pth", "last.pth",
                     "metrics.jsonl"]
    lines = [json.loads(line) for line in (p1_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert {"epoch", "lr", "train_loss", "val_loss", "val_acc", "seconds", "images_per_second"} <= r.keys()
        assert 0 <= r["val_acc"] <= 1 and r["lr"] == 1e-3
    args = json.loads((p1_run / "args.json").read_text())
    assert args["model"] == "vgg13" and args["opt"] == "adamw" and args["epochs"] == 4
    ckpt = load_checkpoint(p1_run / "last.pth", problem="p1")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "best_metric", "arch", "args",
            "mean", "std", "num_classes", "rng", "model_kwargs"} <= ckpt.keys()
    assert ckpt["epoch"] == 4 and ckpt["arch"] == "vgg13" and ckpt["num_classes"] == 50
    assert ckpt["mean"] == pytest.approx([0.5077, 0.4813, 0.4312])
    best = load_checkpoint(p1_run / "best.pth")
    assert best["best_metric"] == max(r["val_acc"] for r in lines)


def test_training_lowers_the_loss(p1_data, tmp_path):
    result = train(p1_data, tmp_path, "--epochs", "4", "--save-epochs")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in lines]
    assert losses[-1] < 0.6 * losses[0], losses
    assert result["best_val_acc"] > 0.5  # 4 separable classes: well above chance (0.25)
    assert not list(tmp_path.glob("epoch_*.pth"))  # --save-epochs with no value keeps none


def test_resume_continues_exactly(p1_data, tmp_path):
    train(p1_data, tmp_path / "straight", "--epochs", "2", "--seed", "3")
    train(p1_data, tmp_path / "split", "--epochs", "1", "--seed", "3")
    # Resume takes the model, data and recipe from the checkpoint; only --epochs is new.
    args = p1_train.get_args_parser().parse_args(
        ["--resume", str(tmp_path / "split" / "last.pth"), "--epochs", "2", "--no-progress"])
    p1_train.main(args)
    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "split" / "last.pth")
    assert b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_resume_redoes_dropped_epochs_and_applies_and_says_a_new_lr_and_decay(p1_data, tmp_path, capsys):
    train(p1_data, tmp_path, "--epochs", "1")
    with open(tmp_path / "metrics.jsonl", "a") as f:  # as if a crash came before last.pth of epoch 2
        f.write(json.dumps({"epoch": 2, "val_acc": 0.0}) + "\n")
    capsys.readouterr()
    args = p1_train.get_args_parser().parse_args(
        ["--resume", str(tmp_path / "last.pth"), "--epochs", "2", "--lr", "0.0005", "--weight-decay", "0.01",
         "--no-progress"])
    p1_train.main(args)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and "train_loss" in lines[1]
    # Epoch 2 trained at the new numbers (the optimiser's saved ones would have kept 1e-3 and 0), and said so.
    assert [r["lr"] for r in lines] == [1e-3, 5e-4]
    groups = load_checkpoint(tmp_path / "last.pth")["optimizer"]["param_groups"]
    assert all(g["lr"] == 5e-4 and g["weight_decay"] == 0.01 for g in groups)
    assert ("from epoch 2 on, --epochs 2 (the run had --epochs 1), --lr 0.0005 (the run had --lr 0.001), "
            "--weight-decay 0.01 (the run had --weight-decay 0.0)") in capsys.readouterr().out


def test_resume_of_a_finished_run_does_nothing(p1_run, capsys):
    before = (p1_run / "last.pth").read_bytes()
    args = p1_train.get_args_parser().parse_args(["--resume", str(p1_run / "last.pth"), "--no-progress"])
    p1_train.main(args)
    assert "nothing to do" in capsys.readouterr().out
    assert (p1_run / "last.pth").read_bytes() == before


def test_resume_refuses_what_it_would_record_without_honouring(p1_run):
    last = p1_run / "last.pth"
    before = last.read_bytes()
    assert_one_line_error(run_main(p1_train, "--resume", last, "--epochs", "2"),
                          f"--epochs 2: {last} has already trained 4 epochs; give --epochs 4 or more")
    # What the checkpoint's weights and optimiser state are of: recorded, it would change nothing.
    for typed, run in ((["--recipe", "strong"], "--recipe reference"), (["--model", "beit"], "--model vgg13"),
                       (["--opt", "sgd"], "--opt adamw"), (["--pretrained"], "--no-pretrained"),
                       (["--no-norm-bias-decay"], "--norm-bias-decay")):
        assert_one_line_error(run_main(p1_train, "--resume", p1_run, *typed),
                              f"{' '.join(typed)}: {last} is a run of {run}, which a resume keeps (")
    assert_one_line_error(run_main(p1_train, "--resume", p1_run, "--overwrite"), "--overwrite and --resume")
    assert_one_line_error(run_main(p1_train, "--resume", p1_run, "--output-dir", p1_run.parent / "elsewhere"),
                          f"a resume continues in its run's folder ({p1_run})")
    # A flag of another model would do nothing to this one.
    assert_one_line_error(run_main(p1_train, "--resume", p1_run, "--global-pool", "token"),
                          "--global-pool token: a flag of beit, not of --model vgg13")
    assert last.read_bytes() == before


def test_one_run_per_folder_while_it_runs_and_a_killed_ones_lock_is_gone(p1_data, tmp_path):
    # Another process holds the folder's lock, as a training run does (flock, with its process id).
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        train, val = p1_data
        argv = ["--train-dir", train, "--val-dir", val, "--output-dir", out, "--epochs", "1", "--batch-size", "16",
                *CPU_FP32, "--no-progress"]
        assert_one_line_error(run_main(p1_train, *argv), f"--output-dir {out}: another run is training there "
                                                         f"(process {holder.pid})")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of this run written
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    run = RunFolder(out)
    run.check_new(resumed=False, overwrite=False)
    run.start({"lr": 0.1})  # the killed holder's lock file is there, free
    run.release()


def test_a_fresh_run_that_fails_before_its_first_checkpoint_leaves_nothing(p1_data, tmp_path, monkeypatch):
    import training.trainer

    def fails(*args, **kwargs):
        raise UserError("validation failed")

    monkeypatch.setattr(training.trainer, "evaluate", fails)
    with pytest.raises(UserError, match="validation failed"):
        train(p1_data, tmp_path / "run", "--epochs", "1")
    assert not (tmp_path / "run").exists()


def test_best_pth_holds_weights_and_resume_takes_last_pth(p1_run, tmp_path):
    best, last = p1_run / "best.pth", p1_run / "last.pth"
    ckpt = load_checkpoint(best)
    assert {"model", "arch", "model_kwargs", "mean", "std", "num_classes", "epoch", "best_metric"} <= ckpt.keys()
    assert not {"optimizer", "scheduler", "scaler", "rng"} & ckpt.keys()
    assert best.stat().st_size < 0.5 * last.stat().st_size  # AdamW's two slots per weight stay in last.pth
    proc = run_main(p1_train, "--resume", best, "--epochs", "5")
    assert_one_line_error(proc, f"--resume {best}: holds weights only", f"resume from {last}")


def test_an_existing_run_is_not_overwritten(p1_data, p1_run):
    before = (p1_run / "best.pth").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(p1_data, p1_run, "--epochs", "1")
    assert (p1_run / "best.pth").read_bytes() == before


def test_overwrite_starts_afresh(p1_data, tmp_path):
    train(p1_data, tmp_path, "--epochs", "2")
    train(p1_data, tmp_path, "--epochs", "1", "--overwrite")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_001.pth"]


def test_beit_trains_one_step(p1_data, tmp_path):
    """The BEiT recipe path end to end: 224 crops, mixup/cutmix soft targets, SGD."""
    t, v = p1_data
    small_train = tmp_path / "train"
    small_val = tmp_path / "val"
    small_train.mkdir()
    small_val.mkdir()
    for p in sorted(t.iterdir())[:2]:
        (small_train / p.name).write_bytes(p.read_bytes())
    for p in sorted(v.iterdir())[:2]:
        (small_val / p.name).write_bytes(p.read_bytes())
    args = p1_train.get_args_parser().parse_args([
        "--model", "beit", "--no-pretrained", "--train-dir", str(small_train), "--val-dir", str(small_val),
        "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", *CPU_FP32,
        "--no-progress"])
    result = p1_train.main(args)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pth")
    assert ckpt["arch"] == "beit" and ckpt["mean"] == [0.5, 0.5, 0.5] and ckpt["std"] == [0.5, 0.5, 0.5]
    assert ckpt["model_kwargs"] == {"num_classes": 50, "global_pool": "avg"}
    assert result["last"]["train_loss"] > 0


# --- one-line errors: run_main runs the command line in this process, as `python3 p1_train.py ...`
# would; test_missing_training_folder runs it in a fresh interpreter, the entry point's smoke test. ---

def test_unknown_model(tmp_path):
    proc = run_main(p1_train, "--model", "resnet", "--output-dir", tmp_path / "o")
    assert_one_line_error(proc, "--model", "resnet")
    assert not (tmp_path / "o").exists()


def test_training_folder_without_labels(tmp_path, p1_data):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in sorted(p1_data[0].iterdir())[:3]:
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "cat.png").write_bytes(next(p1_data[0].iterdir()).read_bytes())
    proc = run_main(p1_train, "--train-dir", bad, "--val-dir", p1_data[1],
                    "--output-dir", tmp_path / "o", *CPU_FP32)
    assert_one_line_error(proc, "cat.png", "carries no class label")
    assert not (tmp_path / "o").exists()


def test_missing_training_folder(tmp_path, p1_data):
    """p1_train.py's smoke test: a real `python3 p1_train.py ...`, whose refusal is one line, exit code 2."""
    proc = run_script("p1_train.py", "--train-dir", tmp_path / "nope", "--val-dir", p1_data[1],
                      "--output-dir", tmp_path / "o", *CPU_FP32)
    assert_one_line_error(proc, f"--train-dir {tmp_path / 'nope'}: no such folder (give --train-dir the folder")
    assert proc.returncode == 2
    assert not (tmp_path / "o").exists()


def test_the_course_data_not_yet_fetched_says_how_to_fetch_it(tmp_path, p1_data, monkeypatch):
    monkeypatch.setitem(BY_NAME["train_dir"].default, "p1", tmp_path / "hw1_data" / "p1_data" / "train_50")
    proc = run_main(p1_train, "--val-dir", p1_data[1], "--output-dir", tmp_path / "o", *CPU_FP32)
    assert_one_line_error(proc, "--train-dir", "no such folder (fetch the course data with: bash hw1_download.sh "
                                "--only hw1_data.zip, or give --train-dir)")
    assert not (tmp_path / "o").exists()


def test_unwritable_output_dir(tmp_path, p1_data):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_main(p1_train, "--train-dir", p1_data[0], "--val-dir", p1_data[1],
                    "--output-dir", blocker / "run", *CPU_FP32)
    assert_one_line_error(proc, "--output-dir", blocker / "run")
    proc = run_main(p1_train, "--train-dir", p1_data[0], "--val-dir", p1_data[1],
                    "--output-dir", blocker, *CPU_FP32)
    assert_one_line_error(proc, f"--output-dir {blocker}: is a file, not a folder")


def test_bad_numbers_and_resume_file(tmp_path):
    assert_one_line_error(run_main(p1_train, "--epochs", "0"), "--epochs must be positive")
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    assert_one_line_error(run_main(p1_train, "--resume", junk), junk, "not a readable checkpoint")


def test_run_folder_checkpoint_files(tmp_path):
    from utils.checkpoint import FORMAT

    run = RunFolder(tmp_path / "run")
    run.start({"lr": 0.1})
    state = {"format": FORMAT, "model": {"w": torch.zeros(2)}, "optimizer": {"state": {}}, "arch": "vgg13",
             "problem": "p1", "model_kwargs": {}}
    run.end_epoch({"epoch": 1}, {**state, "epoch": 1, "rng": {"cpu": torch.zeros(3)}}, is_best=True, snapshot=True)
    best, last = tmp_path / "run" / "best.pth", tmp_path / "run" / "last.pth"
    # best.pth keeps what inference needs, not the optimiser (last.pth has it, for --resume)...
    assert "optimizer" not in load_checkpoint(best) and "rng" not in load_checkpoint(best)
    assert "optimizer" in load_checkpoint(last) and "rng" in load_checkpoint(last)
    # ...and a snapshot of the best epoch is the same file under a second name: no second write.
    assert best.stat().st_ino == (tmp_path / "run" / "epoch_001.pth").stat().st_ino
    snapshot = load_checkpoint(tmp_path / "run" / "epoch_001.pth")
    assert "optimizer" not in snapshot and snapshot["epoch"] == 1
    run.end_epoch({"epoch": 2}, {**state, "epoch": 2}, is_best=False, snapshot=False)
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(best)["epoch"] == 1
    run.end_epoch({"epoch": 3}, {**state, "epoch": 3}, is_best=True, snapshot=False)
    assert load_checkpoint(best)["epoch"] == 3 == load_checkpoint(last)["epoch"]
    assert load_checkpoint(tmp_path / "run" / "epoch_001.pth")["epoch"] == 1  # the new best left it alone
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())  # held while the run trains
    run.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "args.json", "best.pth", "epoch_001.pth", "last.pth", "metrics.jsonl"]


def test_a_onecycle_run_cannot_be_stretched_on_resume():
    import argparse

    from training.optim import Updater

    def updater(epochs):
        args = argparse.Namespace(opt="sgd", lr=0.1, weight_decay=0.0, momentum=0.9, sched="onecycle", epochs=epochs)
        return Updater.from_flags(args, model, steps_per_epoch=5, device=torch.device("cpu"),
                                  amp_dtype=None)

    model = torch.nn.Linear(2, 2)
    ckpt = updater(3).state_dict()
    updater(3).load_state_dict(ckpt)
    with pytest.raises(UserError, match="--epochs 4: a onecycle schedule cannot be stretched on resume .*3 epochs"):
        updater(4).load_state_dict(ckpt)
