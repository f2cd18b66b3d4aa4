"""Report figures: features, embeddings, mask grids and overlays, architectures, curves, index.md."""
import json
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from datasets.p1 import load_folder
from datasets.p2 import CLASS_NAMES, PALETTE
from models import get_model, load_trained
import make_report
import p1_features
import p2_masks
from tests.conftest import CPU_FP32, assert_one_line_error, run_main, run_script
from figures import features, masks, plots as plotting
from figures.architecture import (_Wrap, architecture_summary, layout, plot_architecture, shape_text, trace_blocks,
                                  trace_graph)
from figures.masks import overlay_legend
from figures.plots import (DPI, MIN_FONT, PAGE, class_boundaries, class_styles, mask_overlay, plot_class_iou,
                           plot_compare, plot_confusion, plot_curves, plot_embeddings, plot_image_grid)
from figures.runs import compare_runs, first_middle_last
from utils.errors import UserError
from utils.run_folder import RunFolder


def parse(module, *argv):
    return module.get_args_parser().parse_args([*map(str, argv), *CPU_FP32, "--no-progress"])


def test_p1_features_and_embeddings(p1_run, p1_data, tmp_path):
    # No --val-dir: the run's own validation folder (from its args.json).
    result = p1_features.main(parse(p1_features, "--run", p1_run, "--out", tmp_path))
    assert result["tsne"]["panels"] == 3 and result["tsne"]["epochs"] == [1, 2, 4]
    assert result["tsne"]["points"] == 16
    assert result["tsne"]["titles"][0].startswith("t-SNE, epoch 1\nvalidation accuracy ")
    assert result["feature_dim"] == 512
    assert result["confusion"].shape == (50, 50) and result["confusion"].sum() == 16
    assert (tmp_path / "p1_tsne.png").stat().st_size > 0 and (tmp_path / "p1_pca.png").stat().st_size > 0
    # PCA's axes are its components, each with the share of the variance it explains; t-SNE's mean nothing.
    assert result["tsne"]["axis_labels"] == [None] * 3
    for x, y in result["pca"]["axis_labels"]:
        shares = [float(re.fullmatch(rf"PC{i} \((\d+\.\d)% of the variance\)", label)[1]) for i, label in ((1, x), (2, y))]
        assert shares[0] >= shares[1] > 0 and sum(shares) <= 100


def _run_whose_best_epoch_is(p1_run, folder, best_epoch):
    """:func:`p1_run`'s files, linked, with a metrics.jsonl whose best val_acc is at ``best_epoch``."""
    folder.mkdir()
    for path in p1_run.iterdir():
        if path.name != "metrics.jsonl":
            (folder / path.name).symlink_to(path)
    records = [json.loads(line) for line in (p1_run / "metrics.jsonl").read_text().splitlines()]
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({**r, "val_acc": 1.0 if r["epoch"] == best_epoch else 0.5}) + "\n" for r in records))
    return folder


@pytest.mark.parametrize("best_epoch", [4, 2])
def test_pca_draws_the_best_epoch_once_when_it_is_the_last_snapshot(p1_run, tmp_path, best_epoch):
    run = _run_whose_best_epoch_is(p1_run, tmp_path / "run", best_epoch)  # snapshots 1, 2, 4
    result = p1_features.main(parse(p1_features, "--run", run, "--out", tmp_path / "o"))
    titles = [t.split("\n")[0] for t in result["pca"]["titles"]]
    if best_epoch == 4:
        assert titles == ["PCA (best = last snapshot), epoch 4"] and result["pca"]["panels"] == 1
    else:
        assert titles == ["PCA (best), epoch 2", "PCA (last snapshot), epoch 4"]
    assert all("\nvalidation accuracy " in t for t in result["pca"]["titles"])
    assert result["confusion_epoch"] == best_epoch


def test_extracted_features_are_the_second_last_layer(p1_run, p1_data):
    images = load_folder(p1_data[1], labeled=True).images
    feats, preds, ckpt = features.extract(p1_run / "best.pth", images, batch_size=5,
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
    # The masks are drawn in the pure class colours, the overlay in blends: each legend shows its own.
    assert result["progress"]["legend"] == [(n, tuple(c)) for n, c in zip(CLASS_NAMES, PALETTE)]
    assert result["overlay"]["legend"] == masks.overlay_legend(np.array(PALETTE, dtype=np.uint8))
    assert "boundaries in red" in result["overlay"]["suptitle"] and "black" not in result["overlay"]["suptitle"]


def test_the_overlay_shows_best_pth_not_the_last_epoch(p2_run, p2_data, tmp_path):
    run = tmp_path / "run"  # p2_run's files, linked, not copied
    run.mkdir()
    for name in ("args.json", "metrics.jsonl", "epoch_001.pth", "epoch_002.pth"):
        (run / name).symlink_to(p2_run / name)
    (run / "best.pth").symlink_to(p2_run / "epoch_001.pth")  # a run whose best epoch is not its last
    result = p2_masks.main(parse(p2_masks, "--run", run, "--val-dir", p2_data[1], "--out", tmp_path / "o",
                                 "--ids", "0100"))
    assert result["overlay"]["title"] == "prediction, best.pth (epoch 1)"
    assert result["progress"]["epochs"] == [1, 2]


def test_the_overlay_keeps_white_apart_from_every_other_colour():
    # Barren (white) must read as white on the darkest tile next to any other class on the lightest
    # one: at the course visualiser's plain 0.3 blend, yellow over a white tile is lighter than
    # white over a black one.
    palette = np.array(PALETTE, dtype=np.uint8)
    barren = CLASS_NAMES.index("barren")

    def lightest_channel(tile_value, cls, **overlay):
        tile = np.full((1, 1, 3), tile_value, dtype=np.uint8)
        return mask_overlay(tile, np.full((1, 1), cls), palette, **overlay)[0, 0].min()

    assert lightest_channel(0, barren, alpha=0.3) < lightest_channel(255, 1, alpha=0.3)
    for cls in range(len(PALETTE)):
        if cls != barren:
            assert lightest_channel(0, barren, **masks.OVERLAY) > lightest_channel(255, cls, **masks.OVERLAY)


def test_overlay_boundaries_have_a_colour_of_their_own_and_the_legend_shows_the_blends():
    palette = np.array(PALETTE, dtype=np.uint8)
    boundary = np.array(masks.OVERLAY["boundary"])
    # Not a class colour (black is Unknown, white barren), and far from each: at least one channel
    # differs by 255.
    assert all(np.abs(boundary - colour).max() == 255 for colour in palette)
    legend = dict(masks.overlay_legend(palette))
    assert list(legend) == [*CLASS_NAMES, "class boundary"]
    assert legend["class boundary"] == tuple(boundary)
    grey = np.full((3, 3, 3), masks.MID_GREY, dtype=np.uint8)
    for cls, name in enumerate(CLASS_NAMES):  # each swatch is what the overlay draws over a mid-grey tile
        drawn = mask_overlay(grey, np.full((3, 3), cls), palette, **masks.OVERLAY)
        assert tuple(drawn[1, 1]) == legend[name], name
        assert np.abs(drawn[1, 1].astype(int) - boundary).max() > 100, name  # a boundary stands out on it


def test_p2_masks_defaults_to_the_runs_folder_and_its_first_tiles(p2_run, tmp_path):
    with pytest.warns(UserWarning, match="lacks tiles 0013, 0062, 0104; showing 0100, 0101, 0102"):
        result = p2_masks.main(parse(p2_masks, "--run", p2_run, "--out", tmp_path))
    assert result["progress"]["rows"] == 3


def test_p2_masks_from_the_command_line(p2_run, p2_data, tmp_path):
    """p2_masks.py's smoke test: a real `python3 p2_masks.py ...` draws both figures."""
    out = tmp_path / "o"
    proc = run_script("p2_masks.py", "--run", p2_run, "--val-dir", p2_data[1], "--ids", "0101", "--out", out,
                      *CPU_FP32, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert sorted(p.name for p in out.iterdir()) == ["p2_mask_progress.png", "p2_overlay.png"]
    for name in ("p2_mask_progress.png", "p2_overlay.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_missing_tile_id_and_missing_run(p2_run, p2_data, tmp_path):
    with pytest.raises(UserError, match="--ids 0013: .*0013_sat.jpg does not exist"):
        p2_masks.main(parse(p2_masks, "--run", p2_run, "--val-dir", p2_data[1], "--out", tmp_path, "--ids", "0013"))
    with pytest.raises(UserError, match="--run .*nope: no such run folder"):
        p2_masks.main(parse(p2_masks, "--run", tmp_path / "nope", "--val-dir", p2_data[1]))


def test_run_without_snapshots(p1_run, p1_data, tmp_path):
    """p1_features.py's smoke test: a real `python3 p1_features.py ...`, refused in one line."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes((p1_run / "metrics.jsonl").read_bytes())
    proc = run_script("p1_features.py", "--run", run, "--val-dir", p1_data[1], "--out", tmp_path / "o",
                      *CPU_FP32)
    assert_one_line_error(proc, "--run", str(run), "no epoch_NNN.pth snapshots")
    assert proc.returncode == 2
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
    row = np.array([[0] * 4 + [1] * 4])
    assert class_boundaries(row, 2).astype(int).tolist() == [[0, 0, 0, 1, 1, 0, 0, 0]]  # both sides
    assert class_boundaries(row, 3).astype(int).tolist() == [[0, 0, 1, 1, 1, 0, 0, 0]]
    # A 512-pixel tile, drawn about 450 pixels wide, gets two-pixel boundaries; a 64-pixel one one.
    for size, width in ((512, 2), (64, 1)):
        classes = np.zeros((size, size), dtype=int)
        classes[:, size // 2:] = 1
        drawn = mask_overlay(np.zeros((size, size, 3), np.uint8), classes, palette, boundary=(9, 9, 9))
        assert (drawn[0] == 9).all(-1).sum() == width, size


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


def test_the_trace_keeps_the_deepest_level_that_fits_and_the_resizing_after_the_last_block():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return {"out": nn.functional.interpolate(self.head(self.body(x)), size=x.shape[-2:], mode="bilinear")}

    model, x = Net(), torch.randn(1, 3, 8, 8)
    assert [b["name"] for b in trace_graph(model, x)["blocks"]] == ["body.0", "body.1", "body.2", "head"]
    graph = trace_graph(model, x, fits=lambda g: len(g["blocks"]) <= 2)
    assert [b["name"] for b in graph["blocks"]] == ["body", "head"]
    assert graph["output"] == {"shape": (1, 2, 8, 8), "ops": ["bilinear upsampling"], "keys": ["out"]}
    summary = architecture_summary(graph["blocks"], title="t", input_shape=x.shape, outputs=graph["outputs"],
                                   output=graph["output"]).splitlines()
    assert re.match(r"output +bilinear upsampling +2x8x8 +head$", summary[-2]), summary[-2]


def test_make_report_everything(p1_run, p1_data, p2_run, p2_data, tmp_path):
    made = make_report.main(parse(make_report, "--p1-run", p1_run, "--p1-val-dir", p1_data[1],
                                  "--p2-run", p2_run, "--p2-val-dir", p2_data[1], "--p2-ids", "0100", "0103",
                                  "--p2-arch-size", "64", "--out", tmp_path))
    expected = ["p1_tsne.png", "p1_pca.png", "p1_confusion.png", "p1_curves.png", "p2_mask_progress.png",
                "p2_overlay.png", "p2_class_iou.png", "p2_curves.png"]
    expected += [f"arch_{m}.{ext}" for m in ("vgg13", "beit", "fcn32s", "deeplabv3", "lraspp")
                 for ext in ("png", "txt")]
    index = (tmp_path / "index.md").read_text()
    for name in expected:
        assert (tmp_path / name).is_file(), name
        assert name in index, name
    assert made["p1_curves"]["epochs"] == 4 and made["iou"]["bars"] == 6
    assert made["confusion"]["classes"] >= 4  # the four classes of the data, and any predicted
    # Every figure is drawn for a page at its own size: saved within the page's text area, no text
    # under MIN_FONT (the architectures at whatever nesting level that takes: DeepLabv3's ASPP
    # branches side by side are 11 inches wide).
    drawn = {"tsne": made["features"]["tsne"], "pca": made["features"]["pca"], "progress": made["masks"]["progress"],
             "overlay": made["masks"]["overlay"], **{k: made[k] for k in ("confusion", "p1_curves", "iou", "p2_curves")},
             **{f"arch_{name}": meta for name, meta in made["arch"].items()}}
    assert len(drawn) == len([n for n in expected if n.endswith(".png")])
    for name, meta in drawn.items():
        assert tuple(p / DPI for p in Image.open(meta["path"]).size) == pytest.approx(meta["inches"], abs=0.01), name
        assert meta["inches"][0] <= PAGE[0] and meta["inches"][1] <= PAGE[1], (name, meta["inches"])
        assert meta["min_font"] >= MIN_FONT, name
    for name, meta in made["arch"].items():  # the traced blocks hold every parameter of the model
        assert meta["params"] == meta["total_params"], name
        assert meta["kinds"] and len(meta["kinds"]) == len(set(meta["kinds"])), name  # a legend keys the colours
    # The segmenters upsample to the input size after their last block: the figure and table end there.
    table = (tmp_path / "arch_deeplabv3.txt").read_text().splitlines()
    assert re.match(r"output \(out, aux\) +bilinear upsampling +7x64x64 ", table[-2]), table[-2]
    assert made["p1_curves"]["titles"][0].endswith(": loss, validation accuracy and learning rate per epoch")
    assert "python3 p1_train.py" in index and f"best val acc **{made['p1_best']['val_acc']:.4f}**" in index
    assert "--momentum" not in index  # neither run used SGD


def test_make_report_names_its_own_flag_for_the_tiles(p2_run, tmp_path):
    with pytest.warns(UserWarning, match=r"showing 0100, 0101, 0102 \(choose with --p2-ids\)"):
        made = make_report.main(parse(make_report, "--p2-run", p2_run, "--only", "masks", "--out", tmp_path))
    assert made["masks"]["progress"]["rows"] == 3


def _drawn(monkeypatch):
    """Make ``save_figure`` draw each figure before saving it; returns the list the figures go to."""
    figures = []

    def look_then_save(fig, path, save=plotting.save_figure):
        fig.canvas.draw()
        figures.append((fig, np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)))
        return save(fig, path)

    monkeypatch.setattr(plotting, "save_figure", look_then_save)
    return figures


@pytest.mark.parametrize("ious", [[0.0, 0.0, 0.12, None, 0.0, 0.02], [0.75, 0.88, 0.3, 0.7, 0.8, 0.62]])
def test_class_iou_labels_keep_clear_of_the_miou_line(tmp_path, monkeypatch, ious):
    drawn = _drawn(monkeypatch)
    meta = plot_class_iou(ious, CLASS_NAMES[:6], tmp_path / "iou.png", title="t")
    (fig, pixels), = drawn
    ax = fig.axes[0]
    line_y = ax.transData.transform((0, meta["miou"]))[1]
    values = [t for t in ax.texts if not t.get_text().startswith("mIoU")]
    assert len(values) == 6
    red = np.array([214, 39, 40])  # tab:red, the dashed mIoU line
    for text in values:
        box = text.get_window_extent()
        assert not box.y0 - 1 <= line_y <= box.y1 + 1, text.get_text()
        top, bottom = pixels.shape[0] - int(box.y1), pixels.shape[0] - int(box.y0)
        patch = pixels[top:bottom, int(box.x0):int(box.x1)]
        assert patch.size and not (np.abs(patch - red).sum(-1) < 60).any(), text.get_text()
    label, = [t for t in ax.texts if t.get_text().startswith("mIoU")]
    assert label.get_text() == f"mIoU {np.mean([v for v in ious if v is not None]):.4f}"
    assert label.get_window_extent().x0 > ax.get_window_extent().x1  # right of the bars, beside the line


def _gap_above_legend(fig):
    """Inches between the lowest panel and the top of the figure's legend."""
    panels = min(ax.get_window_extent().y0 for ax in fig.axes)
    return (panels - fig.legends[0].get_window_extent().y1) / fig.dpi


def test_no_blank_band_above_the_legends(tmp_path, monkeypatch):
    drawn = _drawn(monkeypatch)
    rng = np.random.default_rng(0)
    plot_embeddings([("a", rng.normal(size=(40, 2)))] * 2, rng.integers(0, 50, 40), tmp_path / "e.png",
                    num_classes=50, suptitle="t")
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    plot_image_grid([[image] * 5] * 3, list("abcde"), tmp_path / "g.png", row_titles=list("xyz"), suptitle="t",
                    legend=list(zip(CLASS_NAMES, PALETTE)))
    for fig, _ in drawn:
        assert 0 < _gap_above_legend(fig) < 0.3  # the tick-less panels' labels need no more


def test_three_embeddings_leave_their_fourth_cell_to_the_legend(tmp_path, monkeypatch):
    drawn = _drawn(monkeypatch)
    rng = np.random.default_rng(0)
    plot_embeddings([("a", rng.normal(size=(40, 2)))] * 3, np.arange(40) % 20, tmp_path / "e.png", num_classes=50,
                    suptitle="t")
    (fig, _), = drawn
    *panels, cell = fig.axes
    assert len(panels) == 3 and not fig.legends and not cell.axison
    assert [t.get_text() for t in cell.get_legend().get_texts()] == [str(c) for c in range(20)]


def test_fifty_classes_each_have_their_own_colour_and_marker():
    styles = class_styles(50)
    assert len({(tuple(colour), marker) for colour, marker in styles}) == 50
    assert len({tuple(colour) for colour, _ in styles[:10]}) == 10  # ten classes: ten hues, one marker
    with pytest.raises(ValueError):
        class_styles(51)


def test_every_plot_fits_a_report_page_with_its_text_at_least_8_points(tmp_path):
    """Each plot at the most its report puts in it: 50 classes, three runs with long names, 512-pixel
    tiles; saved at a size that fits the page at 1:1, so its text is read at the size it was given."""
    rng = np.random.default_rng(0)
    labels, points = np.arange(500) % 50, rng.normal(size=(500, 2))
    records = [{"epoch": e, "lr": 1e-3 / e, "train_loss": 1 / e, "val_loss": 1 / e, "val_miou": 0.01 * e,
                "val_acc": 0.01 * e} for e in range(1, 101)]
    tile = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    panel = "t-SNE, epoch 100\nvalidation accuracy 0.9264"
    axes = ("PC1 (12.3% of the variance)", "PC2 (10.1% of the variance)")
    made = {
        "tsne": plot_embeddings([(panel, points)] * 3, labels, tmp_path / "tsne.png", num_classes=50,
                                suptitle="beit: t-SNE of the second-last layer on 2500 validation images"),
        "pca": plot_embeddings([(panel, points, axes)] * 2, labels, tmp_path / "pca.png", num_classes=50,
                               suptitle="beit: PCA of the second-last layer on 2500 validation images"),
        "curves": plot_curves(records, tmp_path / "curves.png", metric="miou", title="run p2_deeplabv3_strong_seed12"),
        "compare": plot_compare([(f"p1_vgg13_seed{s} (--lr 0.01 --weight-decay 0.0005)", records) for s in range(3)],
                                tmp_path / "compare.png", metric="acc", title="three seeds of the strong recipe"),
        "confusion": plot_confusion(rng.integers(0, 9, (50, 50)), tmp_path / "confusion.png",
                                    title="beit, best.pth (epoch 30): confusion on 2500 validation images"),
        "iou": plot_class_iou([0.75, 0.88, None, 0.7, 0.8, 0.62], CLASS_NAMES[:6], tmp_path / "iou.png",
                              title="p2_deeplabv3_strong, epoch 100: per-class IoU"),
        "masks": plot_image_grid([[tile] * 5] * 3, ["input", "epoch 1", "epoch 50", "epoch 100", "ground truth"],
                                 tmp_path / "masks.png", row_titles=["0013", "0062", "0104"],
                                 legend=list(zip(CLASS_NAMES, PALETTE)),
                                 suptitle="deeplabv3: predicted masks during training"),
        "overlay": plot_image_grid([[tile] * 2] * 3, ["ground truth", "prediction, best.pth (epoch 100)"],
                                   tmp_path / "overlay.png", row_titles=["0013", "0062", "0104"],
                                   legend=overlay_legend(np.array(PALETTE, dtype=np.uint8)),
                                   legend_title="class colours as blended over a mid-grey tile",
                                   suptitle="deeplabv3: classes blended at 0.45 over the tile at 50% brightness; "
                                            "boundaries in red"),
    }
    for name, meta in made.items():
        pixels = Image.open(meta["path"]).size
        assert tuple(p / DPI for p in pixels) == pytest.approx(meta["inches"], abs=0.01), name
        assert meta["inches"][0] <= PAGE[0] and meta["inches"][1] <= PAGE[1], (name, meta["inches"])
        assert meta["inches"][0] >= 0.75 * PAGE[0], (name, meta["inches"])  # not a stamp in a page's corner
        assert meta["min_font"] >= MIN_FONT, (name, meta["min_font"])


def test_titles_spell_the_metrics_out_and_say_what_a_figure_shows(tmp_path):
    records = [{"epoch": e, "lr": 1e-3, "train_loss": 1 / e, "val_loss": 1 / e, "val_miou": 0.1 * e, "val_acc": 0.2 * e}
               for e in (1, 2)]
    titles = plot_curves(records, tmp_path / "c.png", metric="miou", title="run p2_deeplabv3")["titles"]
    assert titles[0] == "run p2_deeplabv3: loss, validation mIoU and learning rate per epoch"
    assert titles[2] == "validation mIoU\nbest 0.2000 (epoch 2, red)"
    assert plot_curves(records, tmp_path / "c.png", metric="acc", title="r")["titles"][2].startswith(
        "validation accuracy\n")
    titles = plot_compare([("a", records), ("b", records)], tmp_path / "k.png", metric="acc", title="t")["titles"]
    assert titles[1] == "validation accuracy\n(star: best epoch)"


def test_a_constant_learning_rate_gets_an_axis_from_zero(tmp_path):
    flat = [{"epoch": e, "lr": 1e-4, "train_loss": 1 / e, "val_loss": 1 / e, "val_miou": 0.1} for e in (1, 2, 3)]
    assert plot_curves(flat, tmp_path / "c.png", metric="miou", title="t")["lr_axis"] == (0.0, 2e-4)
    cosine = [dict(r, lr=1e-4 / r["epoch"]) for r in flat]
    bottom, top = plot_curves(cosine, tmp_path / "c.png", metric="miou", title="t")["lr_axis"]
    assert 0 < bottom < 1e-4 / 3 and 1e-4 < top < 2e-4  # a schedule keeps its autoscaled axis


def test_the_architecture_graph_draws_branches_side_by_side(tmp_path):
    torch.manual_seed(0)
    model = get_model("deeplabv3", num_classes=7)
    graph = trace_graph(model, torch.randn(1, 3, 64, 64))
    blocks = {b["name"]: b for b in graph["blocks"]}
    aspp = [f"net.classifier.0.convs.{i}" for i in range(5)]
    assert all(blocks[n]["sources"] == ["net.backbone.layer4.2"] for n in aspp)
    assert blocks["net.classifier.0.project"]["sources"] == aspp
    assert blocks["net.aux_classifier.0"]["sources"] == ["net.backbone.layer3.5"]  # the aux head branches off
    assert blocks["net.backbone.layer3.5"]["sources"] == ["net.backbone.layer3.4"]  # residuals stay inside
    assert graph["outputs"] == ["net.classifier.4", "net.aux_classifier.4"]
    # torchvision upsamples both heads to the input's size in its own forward, after the last blocks.
    assert graph["output"] == {"shape": (1, 7, 64, 64), "ops": ["bilinear upsampling"], "keys": ["out", "aux"]}
    where = layout(graph["blocks"], graph["outputs"])
    assert len({where[n][0] for n in aspp}) == 1 and sorted(where[n][1] for n in aspp) == [0, 1, 2, 3, 4]
    main, aux = where["net.classifier.4"], where["net.aux_classifier.4"]
    assert main[0] == aux[0] and main[1] != aux[1]  # the two heads end side by side
    meta = plot_architecture(graph["blocks"], tmp_path / "a.png", title="t", input_shape=(1, 3, 64, 64),
                             outputs=graph["outputs"])
    assert meta["lanes"] == 5 and meta["params"] == sum(p.numel() for p in model.parameters())


def test_a_long_chain_wraps_into_columns_with_a_legend_of_its_block_types(tmp_path):
    blocks = [{"name": f"features.{i}", "type": ("Conv2d", "BatchNorm2d", "ReLU")[i % 3], "shape": (1, 512, 4, 4),
               "params": 2_359_808 if i % 3 == 0 else 0} for i in range(40)]
    meta = plot_architecture(blocks, tmp_path / "a.png", title="t", input_shape=(1, 3, 32, 32), outputs=["features.39"])
    assert meta["rows"] == 42 and meta["columns"] > 1  # input, 40 blocks, output: 27 inches as one column
    assert meta["kinds"] == ["BatchNorm2d", "Conv2d", "ReLU"]
    assert meta["fits"] and all(side <= page for side, page in zip(meta["inches"], PAGE))
    assert meta["min_font"] >= MIN_FONT
    # The fewest columns that fit: one fewer would be taller than the page.
    assert plot_architecture(blocks[:6], tmp_path / "b.png", title="t", input_shape=(1, 3, 32, 32))["columns"] == 1


def test_every_box_holds_its_text(tmp_path, monkeypatch):
    """Measured as drawn, at 100 dpi and at the saved DPI: hinting snapped each glyph's advance to
    whole pixels, which widened a line of 30 characters by 4.7% at 100 dpi and ran LR-ASPP's
    ``net.classifier.high_classifier`` into its box's edge."""
    drawn = []

    def measure_then_save(fig, path):
        ax = fig.axes[0]
        for dpi in (100, DPI):
            fig.set_dpi(dpi)
            fig.canvas.draw()
            drawn.append((dpi, [p.get_window_extent() for p in ax.patches],
                          [(t.get_text(), t.get_window_extent()) for t in ax.texts if t.get_text()]))
        return plotting.save_figure(fig, path)

    monkeypatch.setattr("figures.architecture.save_figure", measure_then_save)
    long = "net.classifier.high_classifier"
    blocks = [{"name": "net.backbone.0", "type": "Conv2dNormActivation", "shape": (1, 16, 64, 64), "params": 464},
              {"name": long, "type": "Conv2d", "shape": (1, 7, 16, 16), "params": 903}]
    plot_architecture(blocks, tmp_path / "a.png", title="t", input_shape=(1, 3, 128, 128), outputs=[long],
                      output={"shape": (1, 7, 128, 128), "ops": ["bilinear upsampling"], "keys": ["out"]})
    for dpi, boxes, texts in drawn:
        assert {long, "bilinear upsampling", "7x128x128"} <= {text for text, _ in texts}
        inside = 0
        for text, extent in texts:
            box = next((b for b in boxes if b.x0 <= extent.x0 <= b.x1 and b.y0 <= extent.y0 <= b.y1), None)
            if box is None:  # the title, the note
                continue
            inside += 1
            margin = 0.02 * dpi  # a fiftieth of an inch
            assert box.x0 + margin <= extent.x0 and extent.x1 <= box.x1 - margin, (dpi, text)
        assert inside == 13  # the input's 2 lines, each block's 4, the output's 3


def test_an_edge_to_a_low_box_runs_under_the_columns():
    """LR-ASPP's skip from the middle of the first column into the lower head, beside the other head."""
    chain = [f"b{i}" for i in range(12)]
    blocks = [{"name": n, "sources": [chain[i - 1]] if i else ["input"]} for i, n in enumerate(chain)]
    blocks += [{"name": "high", "sources": ["b11"]}, {"name": "low", "sources": ["b4"]}]
    where = layout(blocks, ["high", "low"])
    assert where["low"][0] == where["high"][0] and where["low"][1] > where["high"][1]  # the other head to its left
    edges = [(s, b["name"]) for b in blocks for s in b["sources"]] + [("high", "output"), ("low", "output")]
    wrap = _Wrap(where, edges, 2, dict.fromkeys(where, 1.0))
    assert wrap.column(where["b4"][0]) == 0 and wrap.column(where["low"][0]) == 1
    points = wrap.route("b4", "low")
    lowest = min(wrap.box(n)[1] for n in where)
    xs, ys = zip(*points)
    assert min(ys) < lowest and max(ys) < wrap.height  # under the boxes, never over the top
    assert -wrap.under <= min(ys) and 0 <= min(xs) and max(xs) <= wrap.width  # inside the figure
    x, y, w, h = wrap.box("low")
    assert points[-1] == pytest.approx((x + w, y + h / 2))  # into its right side


def test_the_architecture_of_a_vision_transformer_shows_tokens_and_the_cls_token_first():
    torch.manual_seed(0)
    vit = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32, embed_dim=32, depth=2,
                            num_heads=2, num_classes=5)
    graph = trace_graph(vit, torch.randn(1, 3, 32, 32), max_blocks=10)  # the cut at whole blocks, as for BEiT-base
    names = [b["name"] for b in graph["blocks"]]
    assert names.index("cls_token") < names.index("patch_embed")
    blocks = {b["name"]: b for b in graph["blocks"]}
    assert blocks["pos_drop"]["sources"] == ["cls_token", "patch_embed"]
    assert shape_text(blocks["blocks.0"]["shape"]) == "5 tokens x 32"  # 4 patches and the cls token
    assert shape_text(blocks["cls_token"]["shape"]) == "1 token x 32"
    where = layout(graph["blocks"], graph["outputs"])
    assert where["cls_token"] == (where["patch_embed"][0], 0)  # drawn first, beside the patches
    summary = architecture_summary(graph["blocks"], title="t", input_shape=(1, 3, 32, 32))
    assert "5 tokens x 32" in summary and "C x H x W, or tokens x width" in summary


def test_make_report_needs_a_run(tmp_path):
    """The first command is make_report.py's smoke test: a real `python3 make_report.py ...`, refused in one line."""
    proc = run_script("make_report.py", "--out", tmp_path / "r")
    assert_one_line_error(proc, "--p1-run", "--p2-run")
    assert proc.returncode == 2 and not (tmp_path / "r").exists()
    (tmp_path / "file").write_text("")
    # --only arch needs no run; the --out check comes before any model is built.
    assert_one_line_error(run_main(make_report, "--only", "arch", "--out", tmp_path / "file"),
                          f"--out {tmp_path / 'file'}: is a file, not a folder")
    assert_one_line_error(run_main(make_report, "--only", "arch", "--p2-arch-size", "0", "--out", tmp_path / "a"),
                          "--p2-arch-size must be positive (got 0)")
    assert not (tmp_path / "a").exists()
    assert_one_line_error(run_main(p1_features, "--run", tmp_path, "--batch-size", "0", "--out", tmp_path / "f"),
                          "--batch-size must be positive (got 0)")


def test_a_metrics_line_torn_by_a_kill_is_left_out_and_any_other_bad_line_named(p1_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = (p1_run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(lines + '{"epoch": 5, "val_')
    assert [r["epoch"] for r in RunFolder(run).read_metrics()] == [1, 2, 3, 4]
    (run / "metrics.jsonl").write_text("{'epoch': 1}\n" + lines)
    assert_one_line_error(run_main(make_report, "--p1-run", run, "--only", "curves", "--out", tmp_path / "r"),
                          f"{run / 'metrics.jsonl'}: line 1 is not an epoch's record")


def test_confusion_draws_the_classes_present(tmp_path):
    matrix = np.zeros((50, 50), dtype=np.int64)
    matrix[2, 2], matrix[2, 7], matrix[7, 7] = 3, 1, 4
    assert plot_confusion(matrix, tmp_path / "c.png", title="t")["classes"] == 2
    assert plot_confusion(matrix, tmp_path / "c.png", title="t", present_only=False)["classes"] == 50


@pytest.fixture(scope="module")
def p1_run_lr(p1_data, tmp_path_factory):
    """A second, shorter Problem 1 run beside :func:`p1_run`, differing in --lr and --epochs, and in
    --save-epochs (no snapshots, less to write), which a comparison leaves out."""
    import p1_train

    out = tmp_path_factory.mktemp("p1_run_lr")
    train, val = p1_data
    p1_train.main(parse(p1_train, "--train-dir", train, "--val-dir", val, "--output-dir", out,
                        "--lr", "0.002", "--epochs", "2", "--batch-size", "16", "--save-epochs"))
    return out


def test_compare_tables_and_draws_two_runs(p1_run, p1_run_lr, tmp_path):
    made = make_report.main(parse(make_report, "--compare", p1_run, p1_run_lr, "--out", tmp_path))
    assert made["differing"] == ["epochs", "lr"] and made["metric"] == "acc"
    assert not (tmp_path / "index.md").exists()  # the comparison alone
    table = (tmp_path / "compare.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for run, epochs in ((p1_run, 4), (p1_run_lr, 2)):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        best = max(r["val_acc"] for r in records)
        row = next(r for r in made["rows"] if r["run"] == run.name)
        assert row["best"] == best and row["epochs"] == epochs and row["last"] == records[-1]["val_acc"]
        assert records[row["best_epoch"] - 1]["val_acc"] == best
        lr = json.loads((run / "args.json").read_text())["lr"]
        assert row["flags"] == f"--epochs {epochs}, --lr {lr}"  # nothing else differs, written as typed
        cells = [c.strip() for c in rows[run.name].strip("|").split("|")]
        assert cells == [run.name, str(epochs), f"{best:.4f}", str(row["best_epoch"]),
                         f"{records[-1]['val_acc']:.4f}", row["flags"]]
    assert "![validation acc and training loss per epoch](compare.png)" in table
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert made["compare.png"]["lines"] == 2 and made["compare.png"]["panels"] == 2


def test_compare_refuses_one_run_mixed_problems_and_mixed_modes(p1_run, p1_run_lr, p2_run, tmp_path):
    with pytest.raises(UserError, match=f"--compare needs at least two runs to compare, got only {p1_run}"):
        make_report.main(parse(make_report, "--compare", p1_run, "--out", tmp_path))
    with pytest.raises(UserError) as error:
        make_report.main(parse(make_report, "--compare", p1_run, p2_run, "--out", tmp_path))
    message = str(error.value)
    assert "\n" not in message and str(p1_run) in message and str(p2_run) in message
    assert "Problem 1" in message and "Problem 2" in message
    with pytest.raises(UserError, match=f"--compare {tmp_path}: not a run folder"):
        make_report.main(parse(make_report, "--compare", p1_run, tmp_path, "--out", tmp_path / "o"))
    with pytest.raises(UserError, match="--compare makes only the comparison; drop --p1-run"):
        make_report.main(parse(make_report, "--compare", p1_run, p1_run_lr, "--p1-run", p1_run, "--out", tmp_path))
    with pytest.raises(UserError, match=f"{p1_run_lr}.* is the same run as"):
        make_report.main(parse(make_report, "--compare", p1_run_lr, p1_run, p1_run_lr, "--out", tmp_path))
    assert not list(tmp_path.iterdir())  # refused before writing anything


def test_compare_rows_without_drawing(p1_run, tmp_path):
    # Runs told apart by path when their folders share a name; a flag one args.json lacks differs.
    base, runs = json.loads((p1_run / "args.json").read_text()), []
    for seed, extra in ((0, {}), (1, {"tta": None, "cache_dir": "/elsewhere", "pretrained": False})):
        run = tmp_path / f"seed{seed}" / "vgg"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_bytes((p1_run / "metrics.jsonl").read_bytes())
        args = {**base, "seed": seed, "device": f"dev{seed}", **extra}
        if seed == 0:
            del args["pretrained"]
        (run / "args.json").write_text(json.dumps(args))
        runs.append(run)
    comparison = compare_runs(runs)
    assert comparison.differing == ["pretrained", "seed", "tta"]
    assert [r["run"] for r in comparison.rows] == [str(r) for r in runs]
    assert comparison.rows[0]["flags"] == f"--pretrained missing, --seed 0, --tta {base['tta']}"
    assert comparison.rows[1]["flags"] == "--no-pretrained, --seed 1, --tta unset"


def test_a_report_that_fails_part_way_leaves_none_of_its_files(p1_run, tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise UserError("tracing failed")  # after p1_curves.png is written

    monkeypatch.setattr(make_report, "architecture", fails)
    argv = ("--p1-run", p1_run, "--only", "curves", "arch")
    new = tmp_path / "new" / "report"
    assert_one_line_error(run_main(make_report, *argv, "--out", new), "tracing failed")
    assert not (tmp_path / "new").exists()  # the folders it made, with what it wrote there
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.md").write_text("mine")
    assert_one_line_error(run_main(make_report, *argv, "--out", old), "tracing failed")
    assert [p.name for p in old.iterdir()] == ["notes.md"]  # a folder it found keeps what was there


def test_only_confusion_draws_the_confusion_alone(p1_run, p1_data, tmp_path):
    made = make_report.main(parse(make_report, "--p1-run", p1_run, "--p1-val-dir", p1_data[1], "--only", "confusion",
                                  "--out", tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.md", "p1_confusion.png"]
    records = RunFolder(p1_run).read_metrics()
    assert made["features"]["confusion_epoch"] == max(records, key=lambda r: r["val_acc"])["epoch"]  # best.pth's


def test_a_report_with_fewer_sections_leaves_no_figure_of_the_earlier_one(p1_run, tmp_path):
    (tmp_path / "p2_overlay.png").write_bytes(b"an earlier report's")
    (tmp_path / "notes.md").write_text("mine")
    make_report.main(parse(make_report, "--p1-run", p1_run, "--only", "curves", "--out", tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.md", "notes.md", "p1_curves.png"]
