"""The evaluation chain a researcher runs: degrade -> upscale -> eval, end to end on real photographs."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

from osdsr.cli import main


def test_degrade_then_upscale_then_eval_gives_finite_scores(shared_data: Path, tmp_path: Path) -> None:
    hr_dir = tmp_path / "photos"
    hr_dir.mkdir()
    for name in ("kodak/kodim03.png", "scikit-image/rocket.jpg"):
        shutil.copy(shared_data / "hr" / name, hr_dir / Path(name).name)

    pairs = tmp_path / "pairs"
    assert main(["degrade", str(hr_dir), str(pairs), "--seed", "7", "--crop", "256"]) == 0
    sr = tmp_path / "sr"
    assert main(["upscale", str(pairs / "lr"), "-o", str(sr), "--model", "bicubic"]) == 0
    table = tmp_path / "scores.csv"
    assert main(["eval", "--pred", str(sr), "--gt", str(pairs / "hr"), "--metrics", "psnr,ssim,niqe", "--csv", str(table)]) == 0

    rows = list(csv.DictReader(table.open()))
    assert [r["image"] for r in rows] == ["kodim03", "rocket", "mean"]
    for row in rows:
        for metric in ("psnr", "ssim", "niqe"):
            value = float(row[metric])
            assert math.isfinite(value), (row["image"], metric, value)
    mean = rows[-1]
    assert 15 < float(mean["psnr"]) < 40 and 0 < float(mean["ssim"]) < 1
