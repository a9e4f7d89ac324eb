"""HR crop dataset (stateless per index, exclusions, bad files) and paired LR/HR dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from osdsr.data.datasets import HRImageDataset, ImageSource, PairedImageDataset


def _write(path: Path, height: int, width: int, seed: int, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if gray else (height, width, 3)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def hr_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hr"
    for i in range(4):
        _write(folder / f"img{i}.png", 40, 48, seed=i)
    _write(folder / "sub" / "gray.png", 36, 36, seed=9, gray=True)
    return folder


def test_items_are_stateless_per_index(hr_folder: Path) -> None:
    a = HRImageDataset([ImageSource(hr_folder)], 32, seed=3, length=10)
    b = HRImageDataset([ImageSource(hr_folder)], 32, seed=3, length=10)
    later = [b[i] for i in (7, 2, 5)]  # a different access order must not matter
    for item, i in zip(later, (7, 2, 5)):
        assert torch.equal(a[i]["hr"], item["hr"]) and a[i]["name"] == item["name"]
    assert torch.equal(a[12]["hr"], a[2]["hr"])  # indices wrap around the nominal length
    assert not all(torch.equal(a[0]["hr"], a[i]["hr"]) for i in range(1, 10))
    other_seed = HRImageDataset([ImageSource(hr_folder)], 32, seed=4, length=10)
    assert not torch.equal(other_seed[0]["hr"], a[0]["hr"])


def test_crops_come_from_the_images(hr_folder: Path) -> None:
    dataset = HRImageDataset([ImageSource(hr_folder)], 32, seed=0, length=20, augment=False)
    item = dataset[0]
    hr = item["hr"]
    assert hr.shape == (3, 32, 32) and hr.dtype == torch.float32
    pixels = np.asarray(Image.open(hr_folder / item["name"]).convert("RGB"))
    crop = (hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    matches = [
        (top, left)
        for top in range(pixels.shape[0] - 31)
        for left in range(pixels.shape[1] - 31)
        if np.array_equal(pixels[top : top + 32, left : left + 32], crop)
    ]
    assert matches


def test_gray_images_become_three_channels(hr_folder: Path) -> None:
    dataset = HRImageDataset([ImageSource(hr_folder)], 32, seed=0, length=50)
    gray = [dataset[i]["hr"] for i in range(50) if dataset[i]["name"] == "sub/gray.png"]
    assert gray and all(torch.equal(t[0], t[1]) and torch.equal(t[1], t[2]) for t in gray)


def test_exclusion_is_honoured(hr_folder: Path) -> None:
    dataset = HRImageDataset([ImageSource(hr_folder)], 32, seed=0, length=60, exclude={"img1.png", "sub/gray.png"})
    names = {dataset[i]["name"] for i in range(60)}
    assert names == {"img0.png", "img2.png", "img3.png"}


def test_small_images_are_padded_and_tiny_ones_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "small.png", 20, 24, seed=0)
    _write(tmp_path / "tiny.png", 10, 40, seed=1)
    with caplog.at_level(logging.WARNING):
        dataset = HRImageDataset([ImageSource(tmp_path)], 32, seed=0, length=5)
    assert "tiny.png" in caplog.text
    assert {dataset[i]["name"] for i in range(5)} == {"small.png"}
    assert dataset[0]["hr"].shape == (3, 32, 32)


def test_bad_files_are_skipped_with_one_warning(hr_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (hr_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with caplog.at_level(logging.WARNING):
        dataset = HRImageDataset([ImageSource(hr_folder)], 32, seed=0, length=40)
    assert caplog.text.count("broken.png") == 1
    assert "broken.png" not in {dataset[i]["name"] for i in range(40)}


def test_source_without_usable_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no usable image"):
        HRImageDataset([ImageSource(tmp_path / "bad")], 32, seed=0, length=1)
    with pytest.raises(FileNotFoundError):
        HRImageDataset([ImageSource(tmp_path / "missing")], 32, seed=0, length=1)


def test_sources_are_drawn_by_weight_and_lists_work(hr_folder: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# two files\nhr/img0.png\n\nhr/img1.png\n")
    dataset = HRImageDataset(
        [ImageSource(listing, weight=1.0), ImageSource(hr_folder / "sub", weight=1e-9)], 32, seed=0, length=30
    )
    assert {dataset[i]["name"] for i in range(30)} == {"hr/img0.png", "hr/img1.png"}
    balanced = HRImageDataset([ImageSource(listing), ImageSource(hr_folder / "sub")], 32, seed=0, length=30)
    assert "gray.png" in {balanced[i]["name"] for i in range(30)}


def test_real_photos_from_shared_data(shared_data: Path, tmp_path: Path) -> None:
    listing = tmp_path / "two.txt"
    listing.write_text(f"{shared_data}/hr/kodak/kodim01.png\n{shared_data}/hr/scikit-image/camera.png\n")
    dataset = HRImageDataset([ImageSource(listing)], 64, seed=1, length=8)
    items = [dataset[i] for i in range(8)]
    assert all(item["hr"].shape == (3, 64, 64) for item in items)
    assert all(0.0 <= item["hr"].min() and item["hr"].max() <= 1.0 for item in items)


@pytest.fixture
def paired(tmp_path: Path) -> tuple[Path, Path]:
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lr_dir.mkdir()
    for i in range(2):
        hr = _write(hr_dir / f"p{i}.png", 32, 48, seed=i)
        lr = F.avg_pool2d(torch.from_numpy(hr).permute(2, 0, 1).float()[None], 4)[0]
        Image.fromarray(lr.permute(1, 2, 0).round().byte().numpy()).save(lr_dir / f"p{i}.png")
    return lr_dir, hr_dir


def test_paired_crops_stay_aligned(paired: tuple[Path, Path]) -> None:
    dataset = PairedImageDataset(*paired, scale=4, crop_size=16, seed=0, augment=True)
    assert len(dataset) == 2
    for i in range(2):
        item = dataset[i]
        assert item["lr"].shape == (3, 4, 4) and item["hr"].shape == (3, 16, 16)
        # area downscaling commutes with flips and rotations, so an aligned crop matches to 8-bit rounding
        assert torch.allclose(F.avg_pool2d(item["hr"][None], 4)[0], item["lr"], atol=0.6 / 255)
        assert torch.equal(dataset[i]["hr"], item["hr"])
    whole = PairedImageDataset(*paired, scale=4, seed=0, augment=False)[0]
    assert whole["lr"].shape == (3, 8, 12) and whole["name"] == "p0"


def test_paired_mismatches_are_reported(paired: tuple[Path, Path]) -> None:
    lr_dir, hr_dir = paired
    _write(hr_dir / "extra.png", 32, 32, seed=5)
    with pytest.raises(ValueError, match="extra"):
        PairedImageDataset(lr_dir, hr_dir, seed=0, augment=False)
    (hr_dir / "extra.png").unlink()
    _write(hr_dir / "p1.png", 40, 48, seed=1)  # no longer x4 of its LR
    with pytest.raises(ValueError, match="exactly x4"):
        PairedImageDataset(lr_dir, hr_dir, seed=0, augment=False)[1]


def test_lazy_source_gives_the_same_items_and_decodes_nothing_up_front(
    hr_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(hr_folder / "small.png", 20, 40, seed=5)  # padded up to the crop
    rotated = Image.fromarray(np.random.default_rng(6).integers(0, 256, (34, 60, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # a quarter turn: upright it is 60 x 34
    rotated.save(hr_folder / "rotated.jpg", exif=exif)
    (hr_folder / "broken.png").write_bytes(b"not an image")
    eager = HRImageDataset([ImageSource(hr_folder)], 32, seed=1, length=40)

    import osdsr.data.datasets as datasets

    decoded = []
    real_load = datasets.load_image
    monkeypatch.setattr(datasets, "load_image", lambda path: decoded.append(path) or real_load(path))
    lazy = HRImageDataset([ImageSource(hr_folder, in_memory=False)], 32, seed=1, length=40)
    assert decoded == []  # headers only
    assert [i.name for i in lazy.images[0]] == [i.name for i in eager.images[0]]  # same skips, same order
    assert [i.size for i in lazy.images[0]] == [i.size for i in eager.images[0]]
    for index in range(40):
        assert torch.equal(lazy[index]["hr"], eager[index]["hr"]) and lazy[index]["name"] == eager[index]["name"]
    assert {Path(p).name for p in decoded} >= {"rotated.jpg", "small.png"}


def test_an_on_disk_image_that_breaks_is_skipped_the_same_way_whenever_it_is_read(
    hr_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    early = HRImageDataset([ImageSource(hr_folder, in_memory=False)], 32, seed=1, length=40)
    late = HRImageDataset([ImageSource(hr_folder, in_memory=False)], 32, seed=1, length=40)
    before = [late[i] for i in range(40)]  # every item of `late` read while all files were good
    (hr_folder / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # replaced by a damaged file mid-run
    with caplog.at_level(logging.WARNING, logger="osdsr.data.datasets"):
        after = [early[i] for i in reversed(range(40))][::-1]  # another order: a resume at any step
        again = [early[i] for i in range(40)]
    assert all(item["name"] != "img2.png" for item in after)
    assert [a["name"] for a in after] == [a["name"] for a in again]
    assert all(torch.equal(a["hr"], b["hr"]) for a, b in zip(after, again))
    unaffected = [i for i, item in enumerate(before) if item["name"] != "img2.png"]
    assert unaffected and all(torch.equal(before[i]["hr"], after[i]["hr"]) for i in unaffected)
    warnings = [r.getMessage() for r in caplog.records if "img2.png" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("skipping")
