"""demo.py's Problem 2 part, shortened: the README's first command must keep working."""
import json
import re

import demo
from utils.checkpoint import load_checkpoint


def test_demo_p2_trains_grades_and_scores_held_out_tiles(tmp_path):
    args = demo.get_args_parser().parse_args(["--output-dir", str(tmp_path), "--only", "p2", "--p2-epochs", "2",
                                              "--device", "cpu", "--no-progress"])
    common = ["--device", "cpu", "--amp", "off", "--no-progress"]
    line, run = demo.demo_p2(args, common)
    assert run == tmp_path / "p2_lraspp"
    ckpt = load_checkpoint(run / "best.pth", problem="p2")
    assert ckpt["arch"] == "lraspp" and ckpt["model_kwargs"]["bn_momentum"] == 0.1
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[-1]["train_loss"] < records[0]["train_loss"]
    # The summary's two figures: the run's best val_miou and the course scorer's mIoU of the
    # graded held-out masks, which are the same number.
    best, scored = map(float, re.findall(r"val_miou (\d\.\d{4}).*mIoU (\d\.\d{4})", line)[0])
    assert best == scored == round(max(r["val_miou"] for r in records), 4)
    masks = sorted(p.name for p in (tmp_path / "p2_val_masks").iterdir())
    assert len(masks) == demo.P2_VAL_TILES and masks[0] == "1000_sat.png"
