"""demo.py's Problem 2 part, shortened: the README's first command must keep working."""
import json
import re

from tests.conftest import CPU_FP32, assert_one_line_error, run_main, run_script
from utils.checkpoint import load_checkpoint
import demo


def test_demo_p2_trains_grades_and_scores_held_out_tiles(tmp_path):
    args = demo.get_args_parser().parse_args(["--output-dir", str(tmp_path), "--only", "p2", "--p2-epochs", "2",
                                              *CPU_FP32, "--no-progress"])
    common = [*CPU_FP32, "--no-progress"]
    line, run = demo.demo_p2(args, common)
    assert run == tmp_path / "p2_lraspp_seed0"
    ckpt = load_checkpoint(run / "best.pth", problem="p2")
    assert ckpt["arch"] == "lraspp" and ckpt["model_kwargs"]["bn_momentum"] == 0.1
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[-1]["train_loss"] < records[0]["train_loss"]
    # The summary's two figures: the run's best val_miou and the course scorer's mIoU of the
    # graded held-out masks, which are the same number.
    best, scored = map(float, re.findall(r"val_miou (\d\.\d{4}).*mIoU (\d\.\d{4})", line)[0])
    assert best == scored == round(max(r["val_miou"] for r in records), 4)
    masks = sorted(p.name for p in (tmp_path / "p2_lraspp_seed0_val_masks").iterdir())
    assert len(masks) == demo.P2_VAL_TILES and masks[0] == "1000_sat.png"
    # A second demo of this seed would replace the run: refused before anything, unless --overwrite; one of
    # another seed goes beside it.
    before = (run / "last.pth").read_bytes()
    assert_one_line_error(run_main(demo, "--output-dir", tmp_path, "--only", "p2", *CPU_FP32),
                          f"{run}: a demo run of seed 0 is there already; give --overwrite")
    assert (run / "last.pth").read_bytes() == before
    other = demo.get_args_parser().parse_args(["--output-dir", str(tmp_path), "--only", "p2", "--seed", "1"])
    assert demo.run_folders(other) == {"p2": tmp_path / "p2_lraspp_seed1"}


def test_demo_starts_from_the_command_line():
    """demo.py's smoke test: a real `python3 demo.py --help` imports every script the demo runs and shows
    its usage (the demo itself takes minutes; test_demo_p2_trains_grades_and_scores_held_out_tiles runs
    its Problem 2 part in this process)."""
    proc = run_script("demo.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("usage: demo.py ")
    for flag in ("--output-dir", "--only {p1,p2}", "--p2-model {lraspp,fcn32s}", "--p2-epochs", "--device"):
        assert flag in proc.stdout, flag
