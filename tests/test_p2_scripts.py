"""p2_train.py, p2_inference.py, hw1_2.sh and mean_iou_evaluate.py end to end, and their refusals."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import mean_iou_evaluate
from datasets.p2 import PALETTE, read_mask
import p1_inference
import p2_inference
import p2_train
from tests.conftest import CPU_FP32, REPO, assert_one_line_error, run_main, run_script
from utils.checkpoint import load_checkpoint


def test_run_folder_and_checkpoint(p2_run):
    lines = [json.loads(line) for line in (p2_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"val_miou", "val_loss", "train_loss", "val_iou_0", "val_iou_5"} <= lines[0].keys()
    ckpt = load_checkpoint(p2_run / "best.pth", problem="p2")
    assert ckpt["arch"] == "lraspp" and ckpt["num_classes"] == 7
    assert ckpt["mean"] == pytest.approx([0.485, 0.456, 0.406])
    snapshot = load_checkpoint(p2_run / "epoch_001.pth", problem="p2")
    assert "optimizer" not in snapshot and snapshot["epoch"] == 1


def test_deeplab_recipe_lowers_the_loss(p2_data, tmp_path):
    args = p2_train.get_args_parser().parse_args([
        "--model", "deeplabv3", "--no-pretrained", "--train-dir", str(p2_data[0]), "--val-dir", str(p2_data[1]),
        "--output-dir", str(tmp_path), "--tile-size", "64", "--epochs", "3", "--lr", "0.01",
        *CPU_FP32, "--no-progress"])
    p2_train.main(args)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    saved = json.loads((tmp_path / "args.json").read_text())
    assert saved["loss"] == "focal" and saved["ignore_unknown"] and saved["sched"] == "onecycle"
    assert saved["focal_alpha"] == 0.2 and saved["aux_weight"] == 1.0 and saved["augment"] == "flip"


def test_inference_naming_sizes_and_palette(p2_run, p2_data, tmp_path):
    """Mask names, sizes and palette (test_hw1_2_sh is p2_inference.py's real-process smoke test)."""
    images = tmp_path / "in"
    images.mkdir()
    for p in sorted(p2_data[1].iterdir()):  # tiles and their masks, as in the validation folder
        (images / p.name).write_bytes(p.read_bytes())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)).save(images / "odd.jpg")
    out = tmp_path / "out" / "masks"
    proc = run_main(p2_inference, "--checkpoint", p2_run / "best.pth", images, out, *CPU_FP32)
    assert proc.returncode == 0 and proc.stderr == ""  # no --no-progress: stderr is no terminal here, so no bars
    jpgs = sorted(p.stem for p in images.glob("*.jpg"))
    assert sorted(os.listdir(out)) == [f"{stem}.png" for stem in jpgs]  # 0100_sat.jpg -> 0100_sat.png
    for stem in jpgs:
        with Image.open(out / f"{stem}.png") as mask, Image.open(images / f"{stem}.jpg") as tile:
            assert mask.mode == "P" and mask.size == tile.size
            assert {tuple(c) for c in np.asarray(mask.convert("RGB")).reshape(-1, 3)} <= set(PALETTE)


@pytest.mark.numeric
def test_evaluator_agrees_with_training_validation(p2_run, p2_data, tmp_path, capsys):
    """mean_iou_evaluate.py on the masks p2_inference.py writes gives the run's val_miou."""
    ckpt = load_checkpoint(p2_run / "last.pth")
    out = tmp_path / "pred"
    proc = run_main(p2_inference, "--checkpoint", p2_run / "last.pth", p2_data[1], out,
                    *CPU_FP32, "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr
    result = mean_iou_evaluate.main(mean_iou_evaluate.get_args_parser().parse_args(
        ["-g", str(p2_data[1]), "-p", str(out)]))
    assert result["miou"] == pytest.approx(ckpt["metrics"]["val_miou"], abs=1e-12)
    assert result["pixels"] == 4 * 64 * 64
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("class #0 : ") and any(line.startswith("mean_iou: ") for line in printed)


def test_evaluator_prints_the_course_format(tmp_path):
    """mean_iou_evaluate.py's smoke test: a real `python3 mean_iou_evaluate.py -g ... -p ...`."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    palette = np.array(PALETTE, dtype=np.uint8)
    truth = np.array([[0, 0, 1, 1], [2, 3, 4, 5]])
    guess = np.array([[0, 1, 1, 1], [2, 3, 4, 6]])
    Image.fromarray(palette[truth]).save(gt / "0001_mask.png")
    Image.fromarray(palette[guess]).save(pred / "0001_sat.png")
    Image.new("RGB", (4, 2)).save(gt / "0001_sat.jpg")  # the tile beside its mask is ignored
    proc = run_script("mean_iou_evaluate.py", "-g", gt, "-p", pred)
    assert proc.returncode == 0, proc.stderr
    expected = ["class #0 : 0.50000", "class #1 : 0.66667", "class #2 : 1.00000", "class #3 : 1.00000",
                "class #4 : 1.00000", "class #5 : 0.00000", "", f"mean_iou: {(0.5 + 2 / 3 + 3) / 6:f}"]
    assert proc.stdout.splitlines()[:8] == expected


def test_hw1_2_sh(p2_run, p2_data, tmp_path):
    out = tmp_path / "o"
    proc = run_script("bash", REPO / "hw1_2.sh", p2_data[1], out, cwd=tmp_path,
                      env={"HW1_P2_CHECKPOINT": str(p2_run / "best.pth"), "PYTHON": os.sys.executable})
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == [f"{p.stem}.png" for p in sorted(p2_data[1].glob("*.jpg"))]
    assert read_mask(out / "0100_sat.png").shape == (64, 64)


# --- one-line errors -------------------------------------------------------------------------

def test_hw1_2_sh_usage():
    assert_one_line_error(run_script("bash", REPO / "hw1_2.sh"), "usage: bash hw1_2.sh <image_dir> <out_dir>")


def infer(ckpt, images, out):
    """``python3 p2_inference.py --checkpoint CKPT IMAGES OUT --device cpu``, run in this process."""
    return run_main(p2_inference, "--checkpoint", ckpt, images, out, *CPU_FP32)


def test_truncated_jpeg_among_good_ones(p2_run, p2_data, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for p in sorted(p2_data[1].glob("*.jpg")):
        (images / p.name).write_bytes(p.read_bytes())
    good = (images / "0100_sat.jpg").read_bytes()
    (images / "0101_sat.jpg").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    assert_one_line_error(infer(p2_run / "best.pth", images, out), "0101_sat.jpg", "not a readable JPEG")
    assert not out.exists()


def test_missing_or_empty_folder(p2_run, tmp_path):
    assert_one_line_error(infer(p2_run / "best.pth", tmp_path / "nope", tmp_path / "o"), "nope", "no such folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(infer(p2_run / "best.pth", tmp_path / "empty", tmp_path / "o"), "no .jpg images")
    assert not (tmp_path / "o").exists()


def test_problems_do_not_take_each_others_checkpoints(p1_run, p2_run, p1_data, p2_data, tmp_path):
    assert_one_line_error(infer(p1_run / "best.pth", p2_data[1], tmp_path / "o"),
                          "Problem 1", "vgg13", "Problem 2 (segmentation) checkpoint is needed")
    proc = run_main(p1_inference, "--checkpoint", p2_run / "best.pth", p1_data[1], tmp_path / "p.csv",
                    *CPU_FP32)
    assert_one_line_error(proc, "Problem 2", "lraspp", "Problem 1 (classification) checkpoint is needed")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p.csv").exists()


def test_unwritable_output_folder(p2_run, p2_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(infer(p2_run / "best.pth", p2_data[1], blocker / "o"), "OUT_DIR", "cannot write")
    assert_one_line_error(infer(p2_run / "best.pth", p2_data[1], blocker), "is a file, not a folder")


def test_grading_never_writes_into_its_input_nor_beside_masks_of_other_tiles(p2_run, p2_data, tmp_path):
    val = p2_data[1]
    before = sorted(p.name for p in val.iterdir())
    assert_one_line_error(infer(p2_run / "best.pth", val, val), f"OUT_DIR {val} is IMG_DIR")
    assert sorted(p.name for p in val.iterdir()) == before
    out = tmp_path / "masks"
    out.mkdir()
    (out / "9999_sat.png").write_bytes(b"")
    assert_one_line_error(infer(p2_run / "best.pth", val, out), "holds 1 masks these tiles do not produce",
                          "9999_sat.png")
    (out / "9999_sat.png").unlink()
    assert infer(p2_run / "best.pth", val, out).returncode == 0
    assert infer(p2_run / "best.pth", val, out).returncode == 0  # its own masks again: replaced


def test_training_refusals(p2_data, tmp_path):
    """The second command is p2_train.py's smoke test: a real `python3 p2_train.py ...`, refused in one line."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "0000_sat.jpg").write_bytes((p2_data[0] / "0000_sat.jpg").read_bytes())
    proc = run_main(p2_train, "--train-dir", bad, "--val-dir", p2_data[1], "--tile-size", "64",
                    "--output-dir", tmp_path / "o", "--no-pretrained", *CPU_FP32)
    assert_one_line_error(proc, "0000_sat.jpg", "no mask beside it")
    (tmp_path / "cache").write_text("")
    assert_one_line_error(run_main(p2_train, "--cache-dir", tmp_path / "cache", "--train-dir", p2_data[0],
                                   "--val-dir", p2_data[1], "--output-dir", tmp_path / "o", *CPU_FP32),
                          f"--cache-dir {tmp_path / 'cache'}: is a file, not a folder")
    proc = run_script("p2_train.py", "--train-dir", p2_data[0], "--val-dir", p2_data[1],
                      "--output-dir", tmp_path / "o", "--no-pretrained", *CPU_FP32)
    assert_one_line_error(proc, "0000_sat.jpg", "64x64", "training needs 512x512 (--tile-size 512; give --tile-size 64")
    assert proc.returncode == 2
    assert not (tmp_path / "o").exists()


def test_evaluator_refuses_folders_that_do_not_pair(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(gt / f"000{i}_mask.png")
    Image.new("RGB", (8, 8)).save(pred / "0000_sat.png")
    Image.new("RGB", (8, 8)).save(pred / "0001_sat.png")
    assert_one_line_error(run_main(mean_iou_evaluate, "-g", gt, "-p", pred), "no prediction", "0002")
    Image.new("RGB", (8, 8)).save(pred / "0002_sat.png")
    Image.new("RGB", (8, 8)).save(pred / "0009_sat.png")
    assert_one_line_error(run_main(mean_iou_evaluate, "-g", gt, "-p", pred), "without ground truth", "0009")
    (pred / "0009_sat.png").unlink()
    Image.new("RGB", (4, 8)).save(pred / "0002_sat.png")
    assert_one_line_error(run_main(mean_iou_evaluate, "-g", gt, "-p", pred), "0002_sat.png", "4x8")
    # Swapped folders (the predictions hold no xxxx_mask.png), or one folder given twice.
    assert_one_line_error(run_main(mean_iou_evaluate, "-g", pred, "-p", gt), "no ground-truth masks",
                          "are -g and -p swapped?")
    assert_one_line_error(run_main(mean_iou_evaluate, "-g", gt, "-p", gt), "-g and -p are one folder")
