"""``osdsr convert realesrgan``: a tiny RRDBNet saved in both official formats -> model folders -> upscale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osdsr.cli import main
from osdsr.models.realesrgan import RealESRGANConfig, RealESRGANSR
from realesrgan_files import randomise, rrdbnet_graph, save_pth


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RealESRGANSR]:
    """One tiny RRDBNet as RealESRGAN_x4plus.pth (params_ema) and as realesrgan-x4plus.param/.bin (fp16)."""
    folder = tmp_path_factory.mktemp("official")
    model = RealESRGANSR(RealESRGANConfig.tiny("rrdbnet"))
    randomise(model.network)
    save_pth(model.network, folder / "tiny.pth")
    rrdbnet_graph(model.network).write(folder / "tiny.param", folder / "tiny.bin")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)).save(folder / "lr.png")
    return folder, model.eval()


def test_pth_and_ncnn_releases_convert_to_the_same_model_and_output(official, tmp_path: Path) -> None:
    folder, model = official
    ncnn_args = ["--ncnn-param", folder / "tiny.param", "--ncnn-bin", folder / "tiny.bin"]
    for name, source in (("pth", ["--pth", folder / "tiny.pth"]), ("ncnn", ncnn_args)):
        assert main([str(a) for a in ["convert", "realesrgan", *source, "-o", tmp_path / name]]) == 0
        args = ["upscale", folder / "lr.png", "-o", tmp_path / f"sr_{name}", "--model", tmp_path / name, "--color-fix", "none",
                "--dtype", "fp32"]
        assert main([str(a) for a in args]) == 0
    assert json.loads((tmp_path / "pth" / "config.json").read_text())["arch"] == "rrdbnet"
    outputs = [np.asarray(Image.open(tmp_path / f"sr_{name}" / "lr.png")) for name in ("pth", "ncnn")]
    assert outputs[0].shape == (52, 68, 3) and np.array_equal(outputs[0], outputs[1])
    lr = torch.from_numpy(np.asarray(Image.open(folder / "lr.png")).astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = model.network(lr).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(outputs[0].astype(np.float64) / 255 - expected).max() <= 0.5 / 255 + 1e-6


def test_params_wrapper_and_a_plain_state_dict_are_accepted(official, tmp_path: Path) -> None:
    _, model = official
    save_pth(model.network, tmp_path / "params.pth", wrapper="params")
    torch.save(model.network.state_dict(), tmp_path / "plain.pth")
    for name in ("params", "plain"):
        assert main(["convert", "realesrgan", "--pth", str(tmp_path / f"{name}.pth"), "-o", str(tmp_path / name)]) == 0


def test_mismatches_and_bad_arguments_are_one_line_errors(official, tmp_path: Path, capsys) -> None:
    folder, model = official
    state = model.network.state_dict()
    del state["conv_hr.bias"]
    state["conv_last.weight"] = state["conv_last.weight"][:, :4]
    torch.save({"params_ema": state}, tmp_path / "broken.pth")
    cases = [
        (["--pth", tmp_path / "broken.pth"], "1 missing key(s): conv_hr.bias"),
        (["--pth", tmp_path / "broken.pth"], "conv_last.weight (3, 4, 3, 3) (expected (3, 8, 3, 3))"),
        (["--pth", folder / "tiny.pth", "--ncnn-param", folder / "tiny.param"], "give either --pth FILE or both"),
        (["--ncnn-param", folder / "tiny.param"], "needs both --ncnn-param and --ncnn-bin"),
        (["--ncnn-param", folder / "tiny.param", "--ncnn-bin", folder / "tiny.pth"], "wrong .bin for this .param"),
    ]
    for args, message in cases:
        assert main([str(a) for a in ["convert", "realesrgan", *args, "-o", tmp_path / "out"]]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
