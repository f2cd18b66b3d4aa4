"""Problem 2 masks, the course's mIoU on hand-made masks, and the segmentation losses."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.p2 import PALETTE, decode_mask, encode_mask, image_id, load_pairs, read_mask
from training.losses import SegmentationLoss, focal_loss
from utils.errors import UserError
from utils.metrics import MeanIoU, confusion_matrix, iou_from_confusion


def test_palette_colours_decode_to_their_classes():
    rgb = np.array([PALETTE], dtype=np.uint8)  # (1, 7, 3)
    assert decode_mask(rgb).tolist() == [[0, 1, 2, 3, 4, 5, 6]]


def test_noisy_colours_and_red_follow_the_course_threshold():
    rgb = np.array([[[250, 10, 240], [127, 128, 255], [128, 127, 127], [255, 0, 0], [200, 200, 200],
                     [30, 140, 20]]], dtype=np.uint8)
    # magenta, cyan, red->Unknown, red->Unknown, white, green
    assert decode_mask(rgb).tolist() == [[2, 0, 6, 6, 5, 3]]


def test_encode_decode_round_trip(tmp_path):
    classes = np.random.default_rng(0).integers(0, 7, (33, 47)).astype(np.uint8)
    encode_mask(classes).save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and im.size == (47, 33)
        colours = {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}
    assert colours <= set(PALETTE)
    assert np.array_equal(read_mask(tmp_path / "m.png"), classes)


def test_image_ids():
    assert image_id("a/0013_sat.jpg") == image_id("0013_mask.png") == image_id("0013_sat.png") == "0013"
    assert image_id("x.png") == "x"


def miou_of(pairs):
    metric = MeanIoU(7, 6)
    for pred, truth in pairs:
        logits = F.one_hot(torch.tensor(pred), 7).permute(2, 0, 1)[None].float()
        metric.update({"out": logits}, torch.tensor(truth)[None])
    return metric.compute()


def test_miou_class_absent_from_both_sides():
    result = miou_of([([[0, 0], [1, 1]], [[0, 1], [1, 1]])])
    # class 0: TP 1, FP 1, FN 0 -> 1/2; class 1: TP 2, FP 0, FN 1 -> 2/3; classes 2-5 absent.
    assert result["iou_0"] == pytest.approx(0.5) and result["iou_1"] == pytest.approx(2 / 3)
    assert [result[f"iou_{i}"] for i in range(2, 6)] == [None] * 4
    assert result["miou"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_miou_unknown_counts_as_wrong_but_is_not_averaged():
    truth = [[6, 6, 0, 0]]
    pred = [[0, 6, 6, 0]]
    # class 0: TP 1 (last), FP 1 (predicted on Unknown), FN 1 (predicted Unknown) -> 1/3.
    result = miou_of([(pred, truth)])
    assert result["iou_0"] == pytest.approx(1 / 3) and result["miou"] == pytest.approx(1 / 3)


def test_miou_pools_pixels_over_images():
    a = ([[0, 0, 0, 0]], [[0, 0, 0, 0]])  # class 0 perfect: 4/4
    b = ([[1, 1, 1, 1]], [[0, 1, 1, 1]])  # class 0: FN 1; class 1: TP 3 FP 1 -> 3/4
    result = miou_of([a, b])
    # pooled class 0: TP 4, FN 1 -> 4/5 (a mean of per-image IoUs would give (1 + 0) / 2).
    assert result["iou_0"] == pytest.approx(4 / 5) and result["iou_1"] == pytest.approx(3 / 4)
    assert result["miou"] == pytest.approx((4 / 5 + 3 / 4) / 2)


def test_confusion_matrix_rows_are_truth():
    m = confusion_matrix(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 2]), 3)
    assert m.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 1]]
    ious, miou = iou_from_confusion(m, 3)
    assert ious == [0.0, 0.5, 1.0] and miou == pytest.approx(0.5)


def test_focal_equals_cross_entropy_at_gamma_0_alpha_1():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, 6, generator=g)
    target = torch.randint(0, 7, (2, 5, 6), generator=g)
    for ignore in (-100, 6):
        assert torch.allclose(focal_loss(logits, target, alpha=1.0, gamma=0.0, ignore_index=ignore),
                              F.cross_entropy(logits, target, ignore_index=ignore))
    # gamma > 0 down-weights easy pixels: never above alpha * CE.
    assert focal_loss(logits, target, alpha=1.0, gamma=2.0) < F.cross_entropy(logits, target)


def test_focal_is_per_pixel_not_on_the_mean():
    logits = torch.tensor([[[[10.0, -10.0]]], [[[-10.0, 10.0]]]]).permute(1, 0, 2, 3)  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 0]]])  # one easy pixel, one hard pixel
    ce = F.cross_entropy(logits, target, reduction="none")[0, 0]
    pt = (-ce).exp()
    expected = (0.25 * (1 - pt) ** 2 * ce).mean()
    assert torch.allclose(focal_loss(logits, target, alpha=0.25, gamma=2.0), expected)


def test_segmentation_loss_adds_the_aux_output():
    g = torch.Generator().manual_seed(1)
    out, aux = torch.randn(2, 7, 4, 4, generator=g), torch.randn(2, 7, 4, 4, generator=g)
    target = torch.randint(0, 7, (2, 4, 4), generator=g)
    loss = SegmentationLoss("ce", aux_weight=0.4)({"out": out, "aux": aux}, target)
    assert torch.allclose(loss, F.cross_entropy(out, target) + 0.4 * F.cross_entropy(aux, target))
    ignored = SegmentationLoss("ce", ignore_index=6, aux_weight=0.0)({"out": out}, target)
    assert torch.allclose(ignored, F.cross_entropy(out, target, ignore_index=6))


def test_load_pairs_and_cache(p2_data, tmp_path):
    data = load_pairs(p2_data[0], size=64, cache_dir=tmp_path)
    assert data.images.shape == (8, 3, 64, 64) and data.images.dtype == torch.uint8
    assert data.masks.shape == (8, 64, 64) and int(data.masks.max()) <= 6
    assert data.names[0] == "0000_sat.jpg"
    assert len(list(tmp_path.glob("*.npy"))) == 2
    cached = load_pairs(p2_data[0], size=64, cache_dir=tmp_path)  # memory-mapped this time
    assert torch.equal(cached.images, data.images) and torch.equal(cached.masks, data.masks)


def test_bad_training_folders(p2_data, tmp_path):
    src = p2_data[0]
    (tmp_path / "nomask").mkdir()
    (tmp_path / "nomask" / "0000_sat.jpg").write_bytes((src / "0000_sat.jpg").read_bytes())
    with pytest.raises(UserError, match="0000_sat.jpg: no mask beside it"):
        load_pairs(tmp_path / "nomask", size=64)
    (tmp_path / "size").mkdir()
    (tmp_path / "size" / "0000_sat.jpg").write_bytes((src / "0000_sat.jpg").read_bytes())
    Image.new("RGB", (32, 64)).save(tmp_path / "size" / "0000_mask.png")
    with pytest.raises(UserError, match="0000_mask.png: mask is 32x64, its tile is 64x64"):
        load_pairs(tmp_path / "size", size=64)
    with pytest.raises(UserError, match="training needs 512x512"):
        load_pairs(src)
