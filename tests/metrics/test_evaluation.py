"""Folder matching and result tables of the evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osdsr.metrics.evaluation import EvaluationTable, ImagePair, evaluate, match_folders
from osdsr.metrics.fidelity import psnr


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_match_by_stem_across_extensions_and_report_both_sides(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for name in ("a.png", "b.png", "only_pred.png"):
        _save(tmp_path / "pred" / name, pixels)
    for name in ("a.bmp", "b.tif", "only_gt.png"):
        _save(tmp_path / "gt" / name, pixels)
    (tmp_path / "pred" / "notes.txt").write_text("not an image")
    match = match_folders(tmp_path / "pred", tmp_path / "gt")
    assert [(p.name, p.pred.suffix, p.gt.suffix) for p in match.pairs] == [("a", ".png", ".bmp"), ("b", ".png", ".tif")]
    assert match.missing_pred == ["only_gt"] and match.missing_gt == ["only_pred"]
    assert "no prediction: only_gt" in match.mismatch_text() and "no ground truth: only_pred" in match.mismatch_text()


def test_duplicate_stems_and_empty_folders_raise(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    _save(tmp_path / "dup" / "a.png", pixels)
    _save(tmp_path / "dup" / "a.bmp", pixels)
    with pytest.raises(ValueError, match="share the name 'a'"):
        match_folders(tmp_path / "dup", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        match_folders(tmp_path / "empty", None)
    with pytest.raises(NotADirectoryError):
        match_folders(tmp_path / "absent", None)


def test_gray_prediction_against_rgb_ground_truth(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    noisy = np.clip(gray.astype(int) + rng.integers(-5, 6, gray.shape), 0, 255).astype(np.uint8)
    pair = ImagePair("x", _save(tmp_path / "p.png", noisy), _save(tmp_path / "g.png", np.stack([gray] * 3, axis=2)))
    table = evaluate([pair], {"psnr": lambda p, g: psnr(p, g, crop_border=4)})
    assert table.rows[0][1]["psnr"] == pytest.approx(psnr(noisy, gray, crop_border=4), abs=1e-5)  # float32 pixels


def test_table_means_and_formats() -> None:
    table = EvaluationTable(["psnr", "niqe"], [("a", {"psnr": 30.0, "niqe": 4.0}), ("b", {"psnr": 20.0, "niqe": 6.0})])
    table.unavailable["lpips"] = "needs weights"
    assert table.means() == {"psnr": 25.0, "niqe": 5.0}
    assert table.to_csv().splitlines() == [
        "image,psnr,niqe", "a,30.000000,4.000000", "b,20.000000,6.000000", "mean,25.000000,5.000000"
    ]
    markdown = table.to_markdown()
    assert "| image | psnr ↑ | niqe ↓ |" in markdown and "| **mean** | **25.0000** | **5.0000** |" in markdown
    assert "lpips: unavailable (needs weights)" in markdown and "lpips: unavailable" in table.to_text()
