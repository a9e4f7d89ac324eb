"""Shared test fixtures: CPU, fixed seeds, the real photographs in ../shared/data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# Tests use tiny models: one thread is as fast as two and does not oversubscribe a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """The real photographs (``../shared/data``); tests that need them are skipped elsewhere."""
    if not (SHARED_DATA / "hr").is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def hr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 80x72 noise images to train on (``tests/methods`` has photo-like ones of its own)."""
    root = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(root / f"photo{i}.png")
    return root
