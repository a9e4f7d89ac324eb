"""``osdsr degrade`` end to end on two real photographs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from osdsr.cli import main
from osdsr.data.degradation import apply_degradation
from osdsr.data.image_io import image_to_tensor, load_image


@pytest.fixture
def hr_dir(shared_data: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_data / "hr" / "kodak" / "kodim03.png", folder)
    shutil.copy(shared_data / "hr" / "scikit-image" / "camera.png", folder)  # grayscale
    return folder


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_writes_pairs_and_manifest_reproducibly(hr_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["degrade", str(hr_dir), str(first), "--seed", "5", "--crop", "64"]) == 0
    files = _outputs(first)
    assert set(files) == {"degradation.json", "hr/camera.png", "hr/kodim03.png", "lr/camera.png", "lr/kodim03.png"}
    record = json.loads(files["degradation.json"])
    assert (record["seed"], record["preset"], record["scale"], record["crop"]) == (5, "realesrgan", 4, 64)
    assert set(record["images"]) == {"camera.png", "kodim03.png"} and record["failed"] == []
    lr = load_image(first / "lr" / "kodim03.png").pixels
    assert lr.shape == (16, 16, 3) and load_image(first / "hr" / "camera.png").pixels.shape == (64, 64, 3)
    # the recorded parameters rebuild the written LR from the written HR exactly
    hr = image_to_tensor(load_image(first / "hr" / "kodim03.png").pixels)
    rebuilt = apply_degradation(hr, record["images"]["kodim03.png"]["params"])
    assert torch.equal(rebuilt, image_to_tensor(lr))

    # same seed: identical bytes; and an image's result does not depend on the other files in the folder
    assert main(["degrade", str(hr_dir), str(second), "--seed", "5", "--crop", "64"]) == 0
    assert _outputs(second) == files
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(hr_dir / "kodim03.png", alone)
    assert main(["degrade", str(alone), str(tmp_path / "d"), "--seed", "5", "--crop", "64"]) == 0
    assert (tmp_path / "d" / "lr" / "kodim03.png").read_bytes() == files["lr/kodim03.png"]
    third = tmp_path / "c"
    assert main(["degrade", str(hr_dir), str(third), "--seed", "6", "--crop", "64"]) == 0
    assert _outputs(third)["lr/kodim03.png"] != files["lr/kodim03.png"]


def test_refuses_to_overwrite_without_flag(hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["degrade", str(hr_dir), str(out), "--seed", "1", "--crop", "32", "--preset", "mild"]) == 0
    before = _outputs(out)
    assert main(["degrade", str(hr_dir), str(out), "--seed", "2", "--crop", "32", "--preset", "mild"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _outputs(out) == before
    assert main(["degrade", str(hr_dir), str(out), "--seed", "2", "--crop", "32", "--overwrite"]) == 0
    assert json.loads((out / "degradation.json").read_text())["seed"] == 2


def test_bad_file_is_reported_and_the_rest_continue(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (hr_dir / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert main(["degrade", str(hr_dir), str(out), "--seed", "1", "--crop", "32"]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "lr").iterdir()) == ["camera.png", "kodim03.png"]
    assert json.loads((out / "degradation.json").read_text())["failed"] == ["broken.jpg"]


def test_crop_must_be_a_multiple_of_scale(hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["degrade", str(hr_dir), str(tmp_path / "out"), "--seed", "1", "--crop", "30"]) == 2
    assert "multiple" in capsys.readouterr().err
