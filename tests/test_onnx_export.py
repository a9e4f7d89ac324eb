"""``osdsr onnx`` and ``osdsr upscale --model FILE.onnx``: the exported graph reproduces PyTorch.

Without onnx/onnxruntime these tests skip, unless ``OSDSR_REQUIRE_UI_TESTS=1`` (set by ``.ci/run``).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from osdsr.cli import main
from osdsr.metrics.fidelity import psnr_rgb

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PHOTOS = ("rocket.png", "hubble_deep_field.png")  # 256x171 (not a multiple of 8: padded) and 256x256
MIN_PSNR_DB = 45.0


def _need(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        if os.environ.get("OSDSR_REQUIRE_UI_TESTS") == "1":
            raise
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


@pytest.fixture(autouse=True)
def _onnx_installed() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        _need(module)


def _psnr(a: Path, b: Path) -> float:
    with Image.open(a) as first, Image.open(b) as second:
        x, y = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return psnr_rgb(x, y, peak=255.0)


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "default.onnx"
    assert main(["onnx", "--model", "default", "-o", str(path), "--color-fix", "adain"]) == 0
    return path


def test_default_model_matches_pytorch_on_photos(default_onnx: Path, tmp_path: Path) -> None:
    import onnx

    metadata = {entry.key: entry.value for entry in onnx.load(str(default_onnx)).metadata_props}
    assert metadata["scale"] == "4" and metadata["lr_multiple"] == "8" and metadata["color_fix"] == "adain"
    assert main(["onnx", "-o", str(default_onnx)]) == 2  # kept without --overwrite
    inputs = [str(EXAMPLES / name) for name in PHOTOS]
    # the colour fix stored in the file is the default; PyTorch gets it named
    assert main(["upscale", *inputs, "-o", str(tmp_path / "onnx"), "--model", str(default_onnx)]) == 0
    assert main(["upscale", *inputs, "-o", str(tmp_path / "torch"), "--color-fix", "adain", "--dtype", "fp32"]) == 0
    for name in PHOTOS:
        assert _psnr(tmp_path / "onnx" / name, tmp_path / "torch" / name) >= MIN_PSNR_DB, name


def test_tiled_onnx_runs_in_the_same_pipeline(default_onnx: Path, tmp_path: Path) -> None:
    photo = str(EXAMPLES / PHOTOS[1])
    for label, model in (("onnx", str(default_onnx)), ("torch", "default")):
        assert main(["upscale", photo, "-o", str(tmp_path / label), "--model", model, "--tile", "128",
                     "--color-fix", "wavelet", "--dtype", "fp32"]) == 0
    assert _psnr(tmp_path / "onnx" / PHOTOS[1], tmp_path / "torch" / PHOTOS[1]) >= MIN_PSNR_DB


@pytest.mark.parametrize("name", ["bicubic", "lanczos"])
def test_classical_models_export_exactly(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.onnx"
    assert main(["onnx", "--model", name, "-o", str(path)]) == 0
    photo = str(EXAMPLES / PHOTOS[0])
    for label, model in (("onnx", str(path)), ("torch", name)):
        assert main(["upscale", photo, "-o", str(tmp_path / label), "--model", model, "--color-fix", "none"]) == 0
    assert _psnr(tmp_path / "onnx" / PHOTOS[0], tmp_path / "torch" / PHOTOS[0]) >= 60.0


def test_what_does_not_export_or_load_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from osdsr.onnx_export import export_onnx

    with pytest.raises(ValueError, match="only deterministic one-step models"):
        export_onnx(SimpleNamespace(noise_channels=3), tmp_path / "x.onnx", color_fix="none", source="resshift")
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    photo = str(EXAMPLES / PHOTOS[0])
    assert main(["upscale", photo, "-o", str(tmp_path / "out"), "--model", str(tmp_path / "broken.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.onnx: not a readable ONNX model" in err and len(err.splitlines()) == 1
