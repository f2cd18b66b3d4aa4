"""Training on several processes through torchrun (gloo on the CPU), as a user launches it."""
import json
import sys

import pytest

import mean_iou_evaluate
import p1_inference
import p1_train
import p2_inference
from tests.conftest import run_main, run_script
from datasets.p1 import csv_accuracy
from utils.checkpoint import load_checkpoint

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
ENV = {"OMP_NUM_THREADS": "1"}


def test_torchrun_two_processes_write_one_run_with_exact_validation(p1_data, tmp_path):
    train, val = p1_data
    out = tmp_path / "run"
    proc = run_script(*TORCHRUN, "p1_train.py", "--train-dir", train, "--val-dir", val, "--output-dir", out,
                      "--epochs", "3", "--batch-size", "16", "--sched", "cosine", "--device", "cpu", "--no-progress",
                      env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Only rank 0 prints and writes: one line per epoch, one metrics line per epoch, one run.
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("epoch ")] == \
        ["1/3", "2/3", "3/3"]
    assert "2 x cpu" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert sorted(p.name for p in out.iterdir()) == [
        "args.json", "best.pth", "epoch_001.pth", "epoch_003.pth", "last.pth", "metrics.jsonl"]

    # The schedule spans exactly the steps taken: 48 images in global batches of 16, 3 epochs.
    schedule = load_checkpoint(out / "last.pth")["scheduler"]
    assert schedule["last_epoch"] == 9 and schedule["_last_lr"][0] == 0.0  # cosine reached 0 at the last step

    # Each process validated half of the set; the summed counts are the whole set's accuracy, the
    # one a single process gets from the saved weights.
    csv_path = tmp_path / "pred.csv"
    proc = run_main(p1_inference, "--checkpoint", out / "last.pth", "--device", "cpu", "--no-progress", val, csv_path)
    assert proc.returncode == 0, proc.stderr
    assert csv_accuracy(csv_path)[0] == records[-1]["val_acc"]

    # A two-process run resumes on one process (the permutations come from (seed, epoch) alone).
    proc = run_main(p1_train, "--resume", out / "last.pth", "--epochs", "4", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_torchrun_refuses_a_batch_too_small_to_share(p1_data, tmp_path):
    train, val = p1_data
    proc = run_script(*TORCHRUN, "p1_train.py", "--train-dir", train, "--val-dir", val,
                      "--output-dir", tmp_path / "run", "--epochs", "1", "--batch-size", "3",
                      "--device", "cpu", "--no-progress", env=ENV)
    assert proc.returncode != 0
    # Each process prints the one line (torchrun then adds its own failure summary).
    assert proc.stderr.startswith("p1_train.py: error: --batch-size 3 is the global batch"), proc.stderr
    assert "p1_train.py\", line" not in proc.stderr and "utils/" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_torchrun_trains_lraspp_whose_best_pth_grades_to_its_val_miou(p2_data, tmp_path):
    out = tmp_path / "run"
    proc = run_script(*TORCHRUN, "p2_train.py", "--model", "lraspp", "--no-pretrained", "--train-dir", p2_data[0],
                      "--val-dir", p2_data[1], "--tile-size", "64", "--output-dir", out, "--epochs", "3",
                      "--batch-size", "4", "--opt", "adamw", "--lr", "3e-3", "--bn-momentum", "0.1",
                      "--device", "cpu", "--no-progress", env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 x cpu" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    best = max(records, key=lambda r: r["val_miou"])
    ckpt = load_checkpoint(out / "best.pth", problem="p2")
    assert ckpt["arch"] == "lraspp" and ckpt["model_kwargs"]["bn_momentum"] == 0.1 and "optimizer" not in ckpt
    # The grading inference on best.pth, scored by the course's scorer, gives the validation figure
    # the two processes computed together.
    masks = tmp_path / "masks"
    proc = run_main(p2_inference, "--checkpoint", out / "best.pth", "--device", "cpu", "--no-progress", p2_data[1],
                    masks)
    assert proc.returncode == 0, proc.stderr
    scored = mean_iou_evaluate.main(mean_iou_evaluate.get_args_parser().parse_args(["-g", str(p2_data[1]),
                                                                                    "-p", str(masks)]))
    assert scored["miou"] == pytest.approx(best["val_miou"], abs=1e-12)
