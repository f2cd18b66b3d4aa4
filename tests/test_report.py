"""Report figures: features, embeddings, mask grids and overlays, architectures, curves, index.md."""
import numpy as np
import pytest
import torch
from torch import nn

import make_report
import p1_features
import p2_masks
from datasets.p1 import load_folder
from models import load_trained
from tests.conftest import assert_one_line_error, run_script
from utils.errors import UserError
from utils.plotting import class_boundaries, mask_overlay, plot_architecture, plot_confusion, trace_blocks
from utils.report import first_middle_last


def parse(module, *argv):
    return module.get_args_parser().parse_args([*map(str, argv), "--device", "cpu", "--no-progress"])


def test_p1_features_and_embeddings(p1_run, p1_data, tmp_path):
    # No --val-dir: the run's own validation folder (from its args.json).
    result = p1_features.main(parse(p1_features, "--run", p1_run, "--out", tmp_path))
    assert result["tsne"]["panels"] == 3 and result["tsne"]["epochs"] == [1, 2, 4]
    assert result["tsne"]["points"] == 16 and result["pca"]["panels"] == 2  # best and last
    assert result["feature_dim"] == 512
    assert result["confusion"].shape == (50, 50) and result["confusion"].sum() == 16
    assert (tmp_path / "p1_tsne.png").stat().st_size > 0 and (tmp_path / "p1_pca.png").stat().st_size > 0


def test_extracted_features_are_the_second_last_layer(p1_run, p1_data):
    images = load_folder(p1_data[1], labeled=True).images
    feats, preds, ckpt = p1_features.extract(p1_run / "best.pth", images, batch_size=5,
                                             device=torch.device("cpu"), amp_dtype=None, progress=False)
    assert feats.shape == (16, 512) and preds.shape == (16,)
    model, _ = load_trained(p1_run / "best.pth", torch.device("cpu"))
    with torch.no_grad():
        logits = model.head(torch.from_numpy(feats))
    assert np.array_equal(logits.argmax(1).numpy(), preds)


def test_p2_mask_grid_and_overlay(p2_run, p2_data, tmp_path):
    result = p2_masks.main(parse(p2_masks, "--run", p2_run, "--val-dir", p2_data[1], "--out", tmp_path,
                                 "--ids", "0100", "0102"))
    assert result["progress"]["epochs"] == [1, 2]
    assert result["progress"]["rows"] == 2 and result["progress"]["cols"] == 1 + 2 + 1
    assert result["overlay"]["panels"] == 4


def test_p2_masks_defaults_to_the_runs_folder_and_its_first_tiles(p2_run, tmp_path):
    with pytest.warns(UserWarning, match="lacks tiles 0013, 0062, 0104; showing 0100, 0101, 0102"):
        result = p2_masks.main(parse(p2_masks, "--run", p2_run, "--out", tmp_path))
    assert result["progress"]["rows"] == 3


def test_missing_tile_id_and_missing_run(p2_run, p2_data, tmp_path):
    with pytest.raises(UserError, match="--ids 0013: .*0013_sat.jpg does not exist"):
        p2_masks.main(parse(p2_masks, "--run", p2_run, "--val-dir", p2_data[1], "--out", tmp_path, "--ids", "0013"))
    with pytest.raises(UserError, match="--run .*nope: no such run folder"):
        p2_masks.main(parse(p2_masks, "--run", tmp_path / "nope", "--val-dir", p2_data[1]))


def test_run_without_snapshots(p1_run, p1_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes((p1_run / "metrics.jsonl").read_bytes())
    proc = run_script("p1_features.py", "--run", run, "--val-dir", p1_data[1], "--out", tmp_path / "o",
                      "--device", "cpu")
    assert_one_line_error(proc, "--run", str(run), "no epoch_NNN.pth snapshots")
    assert not (tmp_path / "o").exists()


def test_first_middle_last():
    assert first_middle_last([1, 50, 100]) == [1, 50, 100]
    assert first_middle_last([1, 2, 3, 4, 5, 10]) == [1, 5, 10]
    assert first_middle_last([3]) == [3] and first_middle_last([1, 2]) == [1, 2]


def test_overlay_blends_and_draws_boundaries():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    classes = np.array([[0, 0, 1], [0, 0, 1]])
    palette = np.array([[0, 0, 0], [250, 0, 50]], dtype=np.uint8)
    assert class_boundaries(classes).tolist() == [[False, True, False], [False, True, False]]
    out = mask_overlay(image, classes, palette, alpha=0.3, boundary=(9, 9, 9))
    assert out[0, 0].tolist() == [70, 70, 70]  # 0.7 * 100 + 0.3 * 0
    assert out[0, 2].tolist() == [145, 70, 85]  # 0.7 * 100 + 0.3 * (250, 0, 50)
    assert out[0, 1].tolist() == [9, 9, 9] and out[1, 1].tolist() == [9, 9, 9]


def test_trace_sees_through_uncalled_containers(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.branches = nn.ModuleList([nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)])  # never called itself
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = self.stem(x)
            x = sum(b(x) for b in self.branches)
            return self.head(x.mean((2, 3)))

    model = Net()
    blocks = trace_blocks(model, torch.randn(1, 3, 8, 8))
    assert [b["name"] for b in blocks] == ["stem", "branches.0", "branches.1", "head"]
    assert blocks[0]["shape"] == (1, 4, 8, 8) and blocks[-1]["shape"] == (1, 2)
    assert sum(b["params"] for b in blocks) == sum(p.numel() for p in model.parameters())
    meta = plot_architecture(blocks, tmp_path / "a.png", title="net", input_shape=(1, 3, 8, 8))
    assert meta["blocks"] == 4 and (tmp_path / "a.png").is_file()


def test_make_report_everything(p1_run, p1_data, p2_run, p2_data, tmp_path):
    made = make_report.main(parse(make_report, "--p1-run", p1_run, "--p1-val-dir", p1_data[1],
                                  "--p2-run", p2_run, "--p2-val-dir", p2_data[1], "--p2-ids", "0100", "0103",
                                  "--p2-arch-size", "64", "--out", tmp_path))
    expected = ["p1_tsne.png", "p1_pca.png", "p1_confusion.png", "p1_curves.png", "p2_mask_progress.png",
                "p2_overlay.png", "p2_class_iou.png", "p2_curves.png"]
    expected += [f"arch_{m}.{ext}" for m in ("vgg13", "beit", "fcn32s", "deeplabv3") for ext in ("png", "txt")]
    index = (tmp_path / "index.md").read_text()
    for name in expected:
        assert (tmp_path / name).is_file(), name
        assert name in index, name
    assert made["p1_curves"]["epochs"] == 4 and made["iou"]["bars"] == 6
    assert made["confusion"]["classes"] >= 4  # the four classes of the data, and any predicted
    for name, meta in made["arch"].items():  # the traced blocks hold every parameter of the model
        assert meta["params"] == meta["total_params"], name
    assert "python3 p1_train.py" in index and f"best val acc **{made['p1_best']['val_acc']:.4f}**" in index


def test_make_report_needs_a_run(tmp_path):
    assert_one_line_error(run_script("make_report.py", "--out", tmp_path / "r"), "--p1-run", "--p2-run")
    (tmp_path / "file").write_text("")
    assert_one_line_error(run_script("make_report.py", "--only", "arch", "--out", tmp_path / "file"),
                          f"--out {tmp_path / 'file'}: is a file, not a folder")


def test_confusion_draws_the_classes_present(tmp_path):
    matrix = np.zeros((50, 50), dtype=np.int64)
    matrix[2, 2], matrix[2, 7], matrix[7, 7] = 3, 1, 4
    assert plot_confusion(matrix, tmp_path / "c.png", title="t")["classes"] == 2
    assert plot_confusion(matrix, tmp_path / "c.png", title="t", present_only=False)["classes"] == 50
