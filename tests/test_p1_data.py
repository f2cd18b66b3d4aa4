"""Problem 1 data: file discovery, labels, decoding, and the one-line errors for bad folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.digits import write_digits
from datasets.p1 import csv_accuracy, load_folder, parse_label
from datasets.synthetic import write_tiles
from utils.errors import UserError


def test_labels_names_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {}
    for name in ["3_7.png", "10_0.png", "3_12.png", "49_450.png"]:
        pixels[name] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels[name]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_folder(tmp_path, labeled=True)
    assert data.names == ["10_0.png", "3_12.png", "3_7.png", "49_450.png"]
    assert data.labels.tolist() == [10, 3, 3, 49]
    assert data.images.dtype == torch.uint8 and data.images.shape == (4, 3, 32, 32)
    for i, name in enumerate(data.names):
        assert np.array_equal(data.images[i].permute(1, 2, 0).numpy(), pixels[name])


def test_unlabeled_folder_takes_any_png(tmp_path):
    for name in ["a.png", "b.PNG", "0001.png"]:
        Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / name, format="PNG")
    data = load_folder(tmp_path, labeled=False)
    assert data.labels is None
    assert data.names == ["0001.png", "a.png", "b.PNG"]


def test_greyscale_and_rgba_become_rgb(tmp_path):
    Image.new("L", (32, 32), 77).save(tmp_path / "0_0.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 128)).save(tmp_path / "1_0.png")
    data = load_folder(tmp_path, labeled=True)
    assert data.images.shape == (2, 3, 32, 32)
    assert data.images[0, :, 0, 0].tolist() == [77, 77, 77]
    assert data.images[1, :, 0, 0].tolist() == [10, 20, 30]


def test_other_sizes_resized_with_one_warning(tmp_path):
    Image.new("RGB", (64, 48), (200, 100, 0)).save(tmp_path / "0_0.png")
    Image.new("RGB", (16, 16), (0, 100, 200)).save(tmp_path / "0_1.png")
    Image.new("RGB", (32, 32), (5, 5, 5)).save(tmp_path / "0_2.png")
    with pytest.warns(UserWarning, match=r"2 image\(s\) are not 32x32 \(first: 0_0.png, 64x48\)") as rec:
        data = load_folder(tmp_path, labeled=True)
    assert len(rec) == 1
    assert data.images.shape == (3, 3, 32, 32)
    assert data.images[0, :, 16, 16].tolist() == [200, 100, 0]


@pytest.mark.parametrize("name", ["cat_1.png", "img.png", "50_3.png", "_3.png"])
def test_name_without_label(tmp_path, name):
    with pytest.raises(UserError, match="carries no class label"):
        parse_label(tmp_path / name)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_folder(tmp_path / "nope", labeled=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="no .png images found"):
        load_folder(tmp_path / "empty", labeled=False)


@pytest.mark.parametrize("labeled", [True, False])
def test_a_folder_of_problem_2_masks_is_refused(tmp_path, labeled):
    write_tiles(tmp_path, 3, size=32, seed=0)  # 0000_sat.jpg + 0000_mask.png, ...: labels 0..2 by their names
    with pytest.raises(UserError, match=r": holds Problem 2 masks \(0000_mask.png, ...\), not Problem 1 images"):
        load_folder(tmp_path, labeled=labeled)


def test_bad_png_is_named(tmp_path):
    for i in range(3):
        Image.new("RGB", (32, 32)).save(tmp_path / f"0_{i}.png")
    (tmp_path / "0_9.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserError, match="0_9.png: not a readable PNG"):
        load_folder(tmp_path, labeled=True)


def test_jpeg_named_png_is_named(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "0_0.png", format="JPEG")
    with pytest.raises(UserError, match="0_0.png: not a PNG image"):
        load_folder(tmp_path, labeled=True)


def test_digits_demo_layout(tmp_path):
    train, val = write_digits(tmp_path)
    a, b = load_folder(train, labeled=True), load_folder(val, labeled=True)
    assert len(a) + len(b) == 1797
    assert len(b) == 359
    assert sorted(set(a.labels.tolist())) == list(range(10)) == sorted(set(b.labels.tolist()))
    assert not set(a.names) & set(b.names)
    # Greyscale scans written as RGB: the three channels agree, and the digits use the range.
    assert torch.equal(a.images[:, 0], a.images[:, 1]) and a.images.max() == 255


def test_csv_accuracy_scores_labels_against_file_names(tmp_path):
    path = tmp_path / "pred.csv"
    path.write_text("filename,label\n3_450.png,3\n3_451.png,7\n49_452.png,49\n")
    assert csv_accuracy(path) == (2 / 3, 3)
