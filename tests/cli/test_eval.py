"""``osdsr eval`` end to end on small folders cut from the real photographs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osdsr.cli import main
from osdsr.data.image_io import load_image
from osdsr.metrics.fidelity import psnr, ssim
from osdsr.metrics.niqe import niqe

PHOTOS = ("kodim01", "kodim08", "kodim12")
CROP = (0, 0, 208, 112)  # after the 4-pixel border crop: 200x104, two 96x96 NIQE blocks


@pytest.fixture
def folders(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """gt/NAME.bmp crops of Kodak photos and pred/NAME.png, their x4 bicubic down-and-up versions."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for name in PHOTOS:
        hr = Image.open(shared_data / "hr" / "kodak" / f"{name}.png").crop(CROP)
        hr.save(gt_dir / f"{name}.bmp")
        width, height = hr.size
        bicubic = hr.resize((width // 4, height // 4), Image.BICUBIC).resize(hr.size, Image.BICUBIC)
        bicubic.save(pred_dir / f"{name}.png")
    return pred_dir, gt_dir


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


def test_eval_writes_per_image_and_mean_rows(folders, tmp_path: Path, capsys) -> None:
    pred_dir, gt_dir = folders
    out_csv, out_md = tmp_path / "out" / "metrics.csv", tmp_path / "metrics.md"
    args = ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--csv", str(out_csv), "--markdown", str(out_md)]
    assert main(args) == 0

    rows = _read_csv(out_csv)
    assert rows[0] == ["image", "psnr", "ssim", "niqe"]
    assert [row[0] for row in rows[1:]] == [*PHOTOS, "mean"]
    values = np.array([[float(v) for v in row[1:]] for row in rows[1:-1]])
    for name, row in zip(PHOTOS, values):
        pred = load_image(pred_dir / f"{name}.png").pixels
        gt = load_image(gt_dir / f"{name}.bmp").pixels
        np.testing.assert_allclose(row, [psnr(pred, gt), ssim(pred, gt), niqe(pred, crop_border=4)], atol=1e-6)
    np.testing.assert_allclose([float(v) for v in rows[-1][1:]], values.mean(axis=0), atol=1e-6)
    assert 20 < values[:, 0].mean() < 35  # bicubic x4 on real photos

    assert "| **mean** |" in out_md.read_text()
    printed = capsys.readouterr().out
    assert "mean" in printed and rows[1][0] in printed
    assert not list(out_csv.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_mismatched_folders_are_reported(folders, tmp_path: Path, capsys) -> None:
    pred_dir, gt_dir = folders
    (gt_dir / "kodim01.bmp").rename(gt_dir / "unpaired_gt.bmp")
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2
    err = capsys.readouterr().err
    assert "no prediction: unpaired_gt" in err and "no ground truth: kodim01" in err and "--allow-missing" in err

    out_csv = tmp_path / "matched.csv"
    args = ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr", "--csv", str(out_csv)]
    assert main([*args, "--allow-missing"]) == 0
    assert [row[0] for row in _read_csv(out_csv)] == ["image", "kodim08", "kodim12", "mean"]
    assert "evaluating the 2 matching pairs" in capsys.readouterr().err


def test_images_that_cannot_be_scored_are_marked_and_the_rest_scored(folders, tmp_path: Path, capsys) -> None:
    pred_dir, gt_dir = folders
    Image.open(gt_dir / "kodim08.bmp").crop((0, 0, 200, 112)).save(gt_dir / "kodim08.bmp")  # another size
    (pred_dir / "kodim12.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    out_csv = tmp_path / "metrics.csv"
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr", "--csv", str(out_csv)]) == 1
    captured = capsys.readouterr()
    rows = _read_csv(out_csv)
    assert rows[0] == ["image", "psnr", "error"] and [row[0] for row in rows[1:]] == [*PHOTOS, "mean"]
    assert rows[2][1] == rows[3][1] == "" and "208x112" in rows[2][2] and "200x112" in rows[2][2]
    assert "kodim12.png: truncated or corrupt" in rows[3][2] or "kodim12.png: not a readable image" in rows[3][2]
    assert rows[1][2] == "" and rows[-1][1] == rows[1][1]  # the mean is over the scored image
    assert "not scored: kodim08" in captured.out and "not scored: kodim12" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("osdsr eval: 2 of 3 image(s) not scored")


@pytest.mark.parametrize("where", ["folder", "read-only"])
def test_an_unwritable_csv_is_one_line_before_scoring(folders, tmp_path: Path, capsys, monkeypatch, where) -> None:
    import errno
    import tempfile

    import osdsr.metrics.evaluation

    pred_dir, gt_dir = folders
    target = tmp_path / "results"
    if where == "folder":
        target.mkdir()
    else:
        def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(osdsr.metrics.evaluation, "evaluate", lambda *a, **k: pytest.fail("scored before the check"))
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--csv", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"{target}: is a folder; give a file name" if where == "folder" else f"{tmp_path}: cannot write (read-only"
    assert len(err) == 1 and err[0].startswith(f"osdsr eval: error: {expected}")


def test_full_reference_metrics_need_gt(folders, tmp_path: Path, capsys) -> None:
    pred_dir, _ = folders
    assert main(["eval", "--pred", str(pred_dir), "--metrics", "psnr,niqe"]) == 2
    assert "psnr need ground truth: pass --gt DIR" in capsys.readouterr().err
    out_csv = tmp_path / "niqe.csv"
    assert main(["eval", "--pred", str(pred_dir), "--csv", str(out_csv)]) == 0  # default without --gt: NIQE
    assert _read_csv(out_csv)[0] == ["image", "niqe"]


def test_unavailable_metrics_are_reported_not_zero(folders, tmp_path: Path, capsys) -> None:
    pred_dir, gt_dir = folders
    out_csv, out_md = tmp_path / "m.csv", tmp_path / "m.md"
    args = ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr,lpips,musiq"]
    assert main([*args, "--csv", str(out_csv), "--markdown", str(out_md)]) == 0
    assert _read_csv(out_csv)[0] == ["image", "psnr"]
    printed = capsys.readouterr().out
    assert "lpips: unavailable (needs local weight files" in printed and "musiq: unavailable (" in printed
    assert "lpips: unavailable" in out_md.read_text()

    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "lpips"]) == 2
    assert "none of the requested metrics can run here" in capsys.readouterr().err


def test_existing_outputs_need_overwrite(folders, tmp_path: Path, capsys) -> None:
    pred_dir, gt_dir = folders
    out_csv = tmp_path / "m.csv"
    out_csv.write_text("old")
    args = ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr", "--csv", str(out_csv)]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and out_csv.read_text() == "old"
    assert main([*args, "--overwrite"]) == 0
    assert _read_csv(out_csv)[0] == ["image", "psnr"]
