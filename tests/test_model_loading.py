"""Model names and paths resolve to SR models; broken folders and files fail with clear errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from osdsr import model_loading, shipped
from osdsr.model_loading import MODEL_LOADERS, LoadOptions, default_model_dir, load_sr_model
from osdsr.models.classical import ClassicalUpsampler


def _model_folder(root: Path, config: dict | str) -> Path:
    root.mkdir()
    (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    save_file({"w": torch.zeros(1)}, str(root / "model.safetensors"))
    return root


@pytest.mark.parametrize("name", ["bicubic", "lanczos"])
def test_classical_names(name: str) -> None:
    model = load_sr_model(name)
    assert isinstance(model, ClassicalUpsampler) and model.method == name


def test_a_missing_default_model_is_an_error_not_bicubic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shipped, "PACKAGE_ROOT", tmp_path / "site-packages" / "osdsr")
    monkeypatch.setattr(shipped, "REPOSITORY_ROOT", tmp_path / "checkout")
    with pytest.raises(FileNotFoundError, match="weights/default: not found in the installed package"):
        load_sr_model("default")


def test_the_default_model_and_its_predecessor_are_shipped() -> None:
    for name in ("default", "default-v1"):
        assert (default_model_dir(name) / "model.safetensors").is_file()


def test_default_loads_the_embedded_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    calls = []
    monkeypatch.setitem(MODEL_LOADERS, "toy", lambda path, options: calls.append(path) or "toy model")
    monkeypatch.setattr(model_loading, "default_model_dir", lambda name="default": folder / name)
    for name in ("default", "default-v1"):
        _model_folder(folder / name, {"model_type": "toy"})
        assert load_sr_model(name) == "toy model" and calls[-1] == folder / name


def test_folder_dispatches_by_model_type(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "m", {"model_type": "toy", "width": 8})
    seen = []
    monkeypatch.setitem(MODEL_LOADERS, "toy", lambda path, options: seen.append((path, options)) or "toy model")
    options = LoadOptions(steps=4, device="cpu", dtype=torch.bfloat16)
    assert load_sr_model(folder, options) == "toy model"
    assert seen == [(folder, options)]


def test_lora_file_dispatches_by_metadata(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"osdsr_config": json.dumps({"model_type": "toy"})})
    monkeypatch.setitem(MODEL_LOADERS, "toy", lambda p, options: ("loaded", p, options.pretrained))
    assert load_sr_model(path, LoadOptions(pretrained=tmp_path)) == ("loaded", path, tmp_path)


def test_known_model_types_have_loaders() -> None:
    assert {"d3sr", "dfosd", "sd-onestep", "resshift", "sinsr", "tadsr", "tddsr"} <= set(MODEL_LOADERS)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda d: _model_folder(d / "m", {"model_type": "nonsense"}), ValueError, "unknown model_type 'nonsense'"),
        (lambda d: _model_folder(d / "m", {"width": 8}), ValueError, "no \"model_type\""),
        (lambda d: _model_folder(d / "m", "{broken"), ValueError, "not valid JSON"),
        (lambda d: (d / "m").mkdir() or d / "m", FileNotFoundError, "config.json is missing"),
        (lambda d: d / "absent", FileNotFoundError, "no such model"),
        (lambda d: (d / "x.pt").write_bytes(b"1") and d / "x.pt", ValueError, "not a model"),
        (lambda d: (d / "x.safetensors").write_bytes(b"garbage") and d / "x.safetensors", ValueError, "not a readable"),
    ],
)
def test_broken_models_are_clear_errors(tmp_path: Path, make, error: type, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(error, match=match) as info:
        load_sr_model(path)
    assert str(path) in str(info.value)


def test_lora_file_without_config_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="osdsr_config"):
        load_sr_model(path)


def test_the_default_model_runs_without_diffusers_peft_transformers_or_accelerate() -> None:
    """Their imports cost seconds at every start (issue 21); the default model needs none of them."""
    probe = (
        "import sys, torch\n"
        "from osdsr.inference import upscale_tensor\n"
        "from osdsr.model_loading import load_sr_model\n"
        "model = load_sr_model('default')\n"
        "assert type(model).__name__ == 'SDSRModel', type(model)\n"
        "upscale_tensor(model, torch.rand(1, 3, 8, 8))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'peft', 'transformers', 'accelerate'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
