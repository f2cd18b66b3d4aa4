"""p1_inference.py and hw1_1.sh: the grading CSV contract and every bad input."""
import csv
import os
import sys

import pytest
import torch

import p1_inference
from tests.conftest import CPU_FP32, REPO, assert_one_line_error, run_main, run_script, write_p1_folder
from utils.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.io import check_writable


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_contract(p1_run, p1_data, tmp_path):
    """The grading CSV (test_hw1_1_sh is p1_inference.py's real-process smoke test, as the grader runs it)."""
    images = p1_data[1]
    out = tmp_path / "new" / "folder" / "pred.csv"
    proc = run_main(p1_inference, "--checkpoint", p1_run / "best.pth", images, out, *CPU_FP32,
                      "--batch-size", "5")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out)
    assert rows[0] == ["filename", "label"]
    names = [r[0] for r in rows[1:]]
    assert names == sorted(p.name for p in images.iterdir())  # every image once, sorted, name only
    assert all(0 <= int(r[1]) < 50 and r[1] == str(int(r[1])) for r in rows[1:])
    assert os.listdir(out.parent) == ["pred.csv"]  # no temporary file left
    # The predictions are the model's: mostly right on these separable classes.
    correct = sum(int(r[1]) == int(r[0].split("_")[0]) for r in rows[1:])
    assert correct >= len(names) // 2


def test_hw1_1_sh(p1_run, tmp_path):
    images = write_p1_folder(tmp_path / "test", range(3), 2, seed=5)
    for p in images.iterdir():  # the hidden test set's names carry no label
        p.rename(images / f"{abs(hash(p.name)) % 10**6:06d}.png")
    out = tmp_path / "out" / "p1.csv"
    proc = run_script("bash", REPO / "hw1_1.sh", images, out, cwd=tmp_path,
                      env={"HW1_P1_CHECKPOINT": str(p1_run / "best.pth"), "PYTHON": os.sys.executable})
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out)
    assert [r[0] for r in rows[1:]] == sorted(p.name for p in images.iterdir())


def test_hw1_1_sh_usage():
    proc = run_script("bash", REPO / "hw1_1.sh", "only-one-argument")
    assert_one_line_error(proc, "usage: bash hw1_1.sh <image_dir> <out_csv>")


def infer(ckpt, images, out):
    """``python3 p1_inference.py --checkpoint CKPT IMAGES OUT --device cpu``, run in this process."""
    return run_main(p1_inference, "--checkpoint", ckpt, images, out, *CPU_FP32)


def test_missing_and_empty_image_folder(p1_run, tmp_path):
    out = tmp_path / "o" / "p.csv"
    assert_one_line_error(infer(p1_run / "best.pth", tmp_path / "nope", out), tmp_path / "nope", "no such folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(infer(p1_run / "best.pth", tmp_path / "empty", out), "empty", "no .png images")
    assert not (tmp_path / "o").exists()


def test_unreadable_png_among_good_ones(p1_run, tmp_path):
    images = write_p1_folder(tmp_path / "imgs", range(2), 3)
    (images / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "o" / "p.csv"
    assert_one_line_error(infer(p1_run / "best.pth", images, out), "zz_broken.png", "not a readable PNG")
    assert not (tmp_path / "o").exists()


def test_not_a_checkpoint(p1_data, tmp_path):
    junk = tmp_path / "model.pth"
    junk.write_bytes(b"PK\x03\x04 garbage")
    out = tmp_path / "p.csv"
    assert_one_line_error(infer(junk, p1_data[1], out), junk, "not a readable checkpoint")
    assert_one_line_error(infer(tmp_path / "absent.pth", p1_data[1], out), "absent.pth", "no such checkpoint")
    assert not out.exists()


def test_a_text_file_given_as_checkpoint_is_named_as_such(p1_data, tmp_path):
    # A manifest or a README passed by mistake: torch.load alone says "Unsupported operand 35" ('#').
    text = tmp_path / "checkpoints.txt"
    text.write_text("# What hw1_download.sh fetches\np1_best.pth - -\n")
    proc = infer(text, p1_data[1], tmp_path / "p.csv")
    assert_one_line_error(proc, text, "not a readable checkpoint (the file is text, not one written by torch.save)")
    assert "operand" not in proc.stderr
    other = tmp_path / "image.pth"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(UserError, match="image.pth: not a readable checkpoint \\(the file is in another format, "
                                        "not one written by torch.save\\)"):
        load_checkpoint(other)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_output_csv_under_proc_fails_before_inference(p1_data, tmp_path):
    # /proc takes no new files, even for root, whom os.access lets through; the checkpoint does
    # not exist, so a message about the CSV proves the check came before any loading.
    proc = infer(tmp_path / "absent.pth", p1_data[1], "/proc/hw1_pred.csv")
    assert_one_line_error(proc, "OUT_CSV /proc/hw1_pred.csv: cannot write there")


def test_an_output_csv_never_replaces_an_input_image_the_checkpoint_or_a_device(p1_run, p1_data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "0_1.png").write_bytes((p1_data[1] / "0_1.png").read_bytes())
    for out in (images / "0_1.png", p1_run / "best.pth"):
        before = out.read_bytes()
        assert_one_line_error(infer(p1_run / "best.pth", images, out), f"OUT_CSV {out}: exists and is not a .csv file")
        assert out.read_bytes() == before
    assert_one_line_error(infer(p1_run / "best.pth", images, "/dev/null"), "OUT_CSV /dev/null: not a regular file")


def test_check_writable_tries_to_create_a_file(tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # what a read-only mount answers, root or not
    with pytest.raises(UserError, match=f"OUT_CSV {tmp_path / 'p.csv'}: cannot write there \\(no file can be "
                                        f"created in {tmp_path}: Read-only file system\\)"):
        check_writable(tmp_path / "p.csv", "OUT_CSV")


def test_checkpoint_of_the_other_problem(p1_data, tmp_path):
    ckpt = tmp_path / "p2_best.pth"
    save_checkpoint({"format": FORMAT, "model": {}, "arch": "fcn32s", "problem": "p2",
                     "model_kwargs": {"num_classes": 7}}, ckpt)
    out = tmp_path / "p.csv"
    assert_one_line_error(infer(ckpt, p1_data[1], out), ckpt, "Problem 2", "fcn32s")
    assert not out.exists()


def test_checkpoint_whose_weights_do_not_fit(p1_run, p1_data, tmp_path):
    ckpt = torch.load(p1_run / "best.pth", weights_only=True)
    ckpt["model"].pop("head.1.weight")
    bad = tmp_path / "bad.pth"
    save_checkpoint(ckpt, bad)
    assert_one_line_error(infer(bad, p1_data[1], tmp_path / "p.csv"), bad, "does not match its model")


def test_unwritable_output(p1_run, p1_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(infer(p1_run / "best.pth", p1_data[1], blocker / "p.csv"), blocker / "p.csv", "cannot write")
    (tmp_path / "adir").mkdir()
    assert_one_line_error(infer(p1_run / "best.pth", p1_data[1], tmp_path / "adir"), "adir", "is a folder")
