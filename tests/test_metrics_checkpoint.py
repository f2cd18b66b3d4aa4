"""Exact metric values on hand-made inputs; checkpoint round trips and refusals."""
import argparse
import os

import pytest
import torch

from utils.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.metrics import Accuracy


def one_hot_logits(predictions, classes=4):
    return torch.nn.functional.one_hot(torch.tensor(predictions), classes).float()


def test_accuracy_pools_samples_not_batches():
    metric = Accuracy()
    metric.update(one_hot_logits([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]))  # 3 of 4
    metric.update(one_hot_logits([1]), torch.tensor([2]))  # 0 of 1
    # 3/5 = 0.6, where a mean of per-batch accuracies would give (0.75 + 0) / 2 = 0.375.
    assert metric.compute() == {"acc": 0.6}


def test_accuracy_reads_segmenter_outputs():
    metric = Accuracy()
    metric.update({"out": one_hot_logits([2, 2])}, torch.tensor([2, 1]))
    assert metric.compute()["acc"] == 0.5


def make_ckpt(problem="p1"):
    return {"format": FORMAT, "model": {"w": torch.arange(3.0)}, "arch": "vgg13", "problem": problem,
            "model_kwargs": {"num_classes": 50}, "args": {"lr": 0.1, "output_dir": "runs/x"},
            "rng": {"torch": torch.get_rng_state()}, "epoch": 3}


def test_round_trip(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(make_ckpt(), path)
    ckpt = load_checkpoint(path, problem="p1")
    assert torch.equal(ckpt["model"]["w"], torch.arange(3.0)) and ckpt["epoch"] == 3
    assert os.listdir(tmp_path) == ["c.pth"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would have made it


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(make_ckpt(), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"model": lambda: None}, path)  # cannot be pickled
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.pth"]


def test_refusals(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(UserError, match="junk.pth: not a readable checkpoint"):
        load_checkpoint(junk)
    bare = tmp_path / "state_dict.pth"
    torch.save({"w": torch.zeros(1)}, bare)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(bare)
    p2 = tmp_path / "p2.pth"
    save_checkpoint(make_ckpt("p2"), p2)
    with pytest.raises(UserError, match="Problem 2 .* checkpoint .*Problem 1"):
        load_checkpoint(p2, problem="p1")


def test_arbitrary_objects_are_refused(tmp_path):
    """weights_only=True: a pickled object of an arbitrary class is refused, not constructed."""
    path = tmp_path / "namespace.pth"
    torch.save({"model": {}, "arch": "vgg13", "problem": "p1", "model_kwargs": {},
                "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UserError, match=r"not a readable checkpoint \(torch.load with weights_only=True "
                                        r"refused it: Unsupported global: GLOBAL argparse.Namespace"):
        load_checkpoint(path)


def test_a_missing_grading_checkpoint_points_to_the_download(tmp_path):
    from models import load_trained
    from utils.args import REPO

    with pytest.raises(UserError, match="no such checkpoint file .*bash hw1_download.sh"):
        load_trained(REPO / "checkpoints" / "absent_in_every_checkout.pth", torch.device("cpu"))
