"""``osdsr convert resshift``: tiny models saved in the official checkpoint formats -> model folder -> upscale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osdsr.cli import main
from osdsr.config import to_dict
from osdsr.model_loading import LoadOptions
from osdsr.models.resshift_sr import ResShiftModelConfig, build_resshift_sr_model, load_resshift_sr_model


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """A tiny config file and the state dicts of a randomly initialised tiny denoiser and VQ-f4."""
    folder = tmp_path_factory.mktemp("official")
    config = to_dict(ResShiftModelConfig.tiny())
    del config["model_type"]
    (folder / "tiny.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    model = build_resshift_sr_model(ResShiftModelConfig.tiny())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return folder, {"denoiser": model.denoiser.state_dict(), "autoencoder": model.autoencoder.state_dict()}


def _convert(folder: Path, denoiser: Path, autoencoder: Path, out: Path, *extra: str) -> int:
    args = ["convert", "resshift", "--denoiser", denoiser, "--autoencoder", autoencoder, "-o", out]
    return main([str(a) for a in [*args, "--config", folder / "tiny.json", *extra]])


@pytest.mark.parametrize("layout", ["plain", "wrapped", "module_prefix"])
def test_official_formats_convert_to_an_identical_model(tiny_official, tmp_path: Path, layout: str) -> None:
    folder, states = tiny_official
    denoiser_state = states["denoiser"]
    if layout == "wrapped":
        denoiser_state = {"state_dict": denoiser_state, "iters_start": 1000}
    if layout == "module_prefix":
        denoiser_state = {f"module.{k}": v for k, v in denoiser_state.items()}
    torch.save(denoiser_state, tmp_path / "denoiser.pth")
    torch.save({f"_orig_mod.{k}": v for k, v in states["autoencoder"].items()}, tmp_path / "vq.pth")

    assert _convert(folder, tmp_path / "denoiser.pth", tmp_path / "vq.pth", tmp_path / "out") == 0
    loaded = load_resshift_sr_model(tmp_path / "out", LoadOptions())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "resshift"
    for name, state in states.items():
        ours = getattr(loaded, name).state_dict()
        assert all(torch.equal(ours[k], v) for k, v in state.items()) and len(ours) == len(state)


def test_converted_model_upscales_end_to_end(tiny_official, tmp_path: Path) -> None:
    folder, states = tiny_official
    torch.save(states["denoiser"], tmp_path / "denoiser.pth")
    torch.save(states["autoencoder"], tmp_path / "vq.pth")
    assert _convert(folder, tmp_path / "denoiser.pth", tmp_path / "vq.pth", tmp_path / "model") == 0
    rgb = (np.random.default_rng(0).random((12, 20, 3)) * 255).astype(np.uint8)  # padded to 16x32 inside
    Image.fromarray(rgb).save(tmp_path / "lr.png")
    upscale = ["upscale", str(tmp_path / "lr.png"), "-o", str(tmp_path / "sr"), "--model", str(tmp_path / "model")]
    assert main([*upscale, "--steps", "15", "--color-fix", "none"]) == 0
    with Image.open(tmp_path / "sr" / "lr.png") as result:
        assert result.size == (80, 48)
        pixels = np.asarray(result.convert("RGB")).astype(np.float32)
    assert np.isfinite(pixels).all() and pixels.std() > 0


def test_convert_refuses_missing_and_unexpected_keys(tiny_official, tmp_path: Path, capsys) -> None:
    folder, states = tiny_official
    broken = dict(states["denoiser"])
    broken["time_embed.9.weight"] = broken.pop("time_embed.0.weight")
    torch.save(broken, tmp_path / "denoiser.pth")
    torch.save(states["autoencoder"], tmp_path / "vq.pth")
    assert _convert(folder, tmp_path / "denoiser.pth", tmp_path / "vq.pth", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "1 missing key(s): denoiser.time_embed.0.weight" in error
    assert "1 unexpected key(s): denoiser.time_embed.9.weight" in error
    assert not (tmp_path / "out").exists()


def test_convert_refuses_wrong_shapes_bad_files_and_existing_output(tiny_official, tmp_path: Path, capsys) -> None:
    folder, states = tiny_official
    torch.save(states["denoiser"], tmp_path / "denoiser.pth")
    torch.save(states["autoencoder"], tmp_path / "vq.pth")
    # the official full-size architecture (no --config) does not fit the tiny weights
    full = ["convert", "resshift", "--denoiser", tmp_path / "denoiser.pth", "--autoencoder", tmp_path / "vq.pth"]
    assert main([str(a) for a in [*full, "-o", tmp_path / "full"]]) == 2
    assert "shape mismatch" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert _convert(folder, tmp_path / "junk.pth", tmp_path / "vq.pth", tmp_path / "out") == 2
    assert "not a loadable weights-only PyTorch checkpoint" in capsys.readouterr().err
    assert _convert(folder, tmp_path / "denoiser.pth", tmp_path / "vq.pth", tmp_path / "out") == 0
    assert _convert(folder, tmp_path / "denoiser.pth", tmp_path / "vq.pth", tmp_path / "out") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _convert(folder, tmp_path / "denoiser.pth", tmp_path / "vq.pth", tmp_path / "out", "--overwrite") == 0
