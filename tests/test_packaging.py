"""The wheel carries every Python package, the configs and the embedded default model (package data)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_maps_the_shipped_folders() -> None:
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(REPO_ROOT / "src").parts) for init in (REPO_ROOT / "src").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == found | {"osdsr.configs", "osdsr.weights"}
    assert setuptools["package-dir"] == {"": "src", "osdsr.configs": "configs", "osdsr.weights": "weights"}


@pytest.mark.slow
def test_the_built_wheel_holds_the_configs_and_the_default_model(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("osdsr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"osdsr/configs/{p.name}" for p in (REPO_ROOT / "configs").iterdir()}
    default = {f"osdsr/weights/{p.parent.name}/{p.name}" for p in (REPO_ROOT / "weights").glob("*/*")}
    assert {"osdsr/weights/default/model.safetensors", "osdsr/weights/default-v1/model.safetensors"} <= default
    assert configs <= names and default <= names
    assert "osdsr/metrics/niqe_pristine.json" in names
