"""Training on several processes through torchrun (gloo on the CPU), as a user launches it: on one
machine, and on two "machines" (two torchrun agents meeting at a rendezvous on 127.0.0.1)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

import mean_iou_evaluate
import p1_inference
import p1_train
import p2_inference
from tests.conftest import CPU_FP32, REPO, assert_one_line_error, run_main, run_script
from datasets.p1 import csv_accuracy
from models import get_model
from training.losses import SegmentationLoss
from utils import distributed
from utils.checkpoint import load_checkpoint

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
ENV = {"OMP_NUM_THREADS": "1"}


def test_a_batch_too_small_to_share_is_refused_before_any_file(p1_data, tmp_path, monkeypatch):
    # As torchrun's second process would find it (the launch itself is tested below).
    monkeypatch.setattr("training.setup.distributed.init", lambda device: distributed.Context(rank=0, world_size=2))
    train, val = p1_data
    proc = run_main(p1_train, "--train-dir", train, "--val-dir", val, "--output-dir", tmp_path / "run",
                    "--epochs", "1", "--batch-size", "3", *CPU_FP32, "--no-progress")
    assert_one_line_error(proc, "p1_train.py: error: --batch-size 3 is the global batch: it leaves each of the 2 "
                                "processes fewer than 2 samples (use --batch-size >= 4)")
    assert not (tmp_path / "run").exists()


def test_torchrun_trains_lraspp_whose_best_pth_grades_to_its_val_miou(p2_data, tmp_path):
    out = tmp_path / "run"
    proc = run_script(*TORCHRUN, "p2_train.py", "--model", "lraspp", "--no-pretrained", "--train-dir", p2_data[0],
                      "--val-dir", p2_data[1], "--tile-size", "64", "--output-dir", out, "--epochs", "3",
                      "--batch-size", "4", "--opt", "adamw", "--lr", "3e-3", "--bn-momentum", "0.1",
                      *CPU_FP32, "--no-progress", env=ENV)
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
    proc = run_main(p2_inference, "--checkpoint", out / "best.pth", *CPU_FP32, "--no-progress", p2_data[1],
                    masks)
    assert proc.returncode == 0, proc.stderr
    scored = mean_iou_evaluate.main(mean_iou_evaluate.get_args_parser().parse_args(["-g", str(p2_data[1]),
                                                                                    "-p", str(masks)]))
    assert scored["miou"] == pytest.approx(best["val_miou"], abs=1e-12)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_nodes(*argv, logs):
    """Run a script as a two-machine job: two torchrun agents of one process each, meeting at a c10d
    rendezvous on 127.0.0.1, as ``torchrun --nnodes 2`` on two hosts would. Each agent's output goes
    to files in the folder ``logs`` (pipes read one after the other could fill and stall the job).

    Returns:
        A CompletedProcess per agent.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", logs.name,
           *map(str, argv)]
    logs.mkdir()
    agents = []
    try:
        for node in range(2):
            with open(logs / f"{node}.out", "w") as out, open(logs / f"{node}.err", "w") as err:
                agents.append(subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=out, stderr=err))
        for agent in agents:
            agent.wait(timeout=240)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    return [subprocess.CompletedProcess(cmd, agent.returncode, (logs / f"{node}.out").read_text(),
                                        (logs / f"{node}.err").read_text()) for node, agent in enumerate(agents)]


def test_two_machines_train_one_run_with_exact_validation_and_resume_it(p1_data, tmp_path):
    """Two torchrun agents of one process each (two machines), then a resume on one process."""
    train, val = p1_data
    out = tmp_path / "run"
    procs = torchrun_two_nodes("p1_train.py", *CPU_FP32, "--batch-size", "16", "--no-progress", "--train-dir",
                               train, "--val-dir", val, "--output-dir", out, "--epochs", "2", "--sched", "cosine",
                               logs=tmp_path / "launch")
    assert all(p.returncode == 0 for p in procs), [p.stdout + p.stderr for p in procs]
    # Global rank 0 (on whichever machine the rendezvous made node 0) alone prints and writes.
    printed = [line for p in procs for line in p.stdout.splitlines()]
    training = [line for line in printed if line.startswith("training vgg13")]
    assert len(training) == 1 and "2 x cpu" in training[0], printed
    assert [line.split()[1] for line in printed if line.startswith("epoch ")] == ["1/2", "2/2"], printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == [
        "args.json", "best.pth", "epoch_001.pth", "epoch_002.pth", "last.pth", "metrics.jsonl"]
    # The schedule spans exactly the steps taken: 48 images in global batches of 16, 2 epochs.
    schedule = load_checkpoint(out / "last.pth")["scheduler"]
    assert schedule["last_epoch"] == 6 and schedule["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)

    # Each process validated half of the set; the summed counts are the whole set's accuracy, the
    # one a single process gets from the saved weights.
    csv_path = tmp_path / "pred.csv"
    proc = run_main(p1_inference, "--checkpoint", out / "last.pth", *CPU_FP32, "--no-progress", val, csv_path)
    assert proc.returncode == 0, proc.stderr
    assert csv_accuracy(csv_path)[0] == records[-1]["val_acc"]

    # A two-process run resumes on one process (the permutations come from (seed, epoch) alone).
    proc = run_main(p1_train, "--resume", out / "last.pth", "--epochs", "3", *CPU_FP32, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

def test_deeplabv3_without_its_auxiliary_loss_trains_under_ddp_and_its_aux_head_gets_zero_gradients(tmp_path):
    """--aux-weight 0 left DeepLabv3's auxiliary head without gradients, which DistributedDataParallel
    refused at the second step ("Expected to have finished reduction in the prior iteration"). One
    gloo process is enough to meet DDP's check, without a torchrun launch."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 7, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    # Eval mode: no dropout draws, so the two passes compared below are the same computation.
    model = get_model("deeplabv3", num_classes=7, pretrained=False).eval()
    criterion = SegmentationLoss("ce", aux_weight=0.0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        for _ in range(2):  # the second step is the one DDP refused
            model.zero_grad()
            criterion(ddp(x), y).backward()
    finally:
        dist.destroy_process_group()
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.net.aux_classifier.parameters())
    # The other gradients are those of the main output's loss alone.
    others = [*model.net.backbone.parameters(), *model.net.classifier.parameters()]
    main = torch.autograd.grad(nn.functional.cross_entropy(model(x)["out"], y), others)
    assert all(torch.equal(grad, p.grad) for grad, p in zip(main, others))
