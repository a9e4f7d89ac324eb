"""The teacher cache: deterministic samples keyed by everything they depend on, resumable, augmented alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from osdsr.data.datasets import HRImageDataset, ImageSource
from osdsr.data.degradation import MILD, PHOTO
from osdsr.data.teacher_cache import CacheSpec, TeacherCache, build_cache, cache_key

CROP = 32


def _nearest_teacher(lr: torch.Tensor) -> torch.Tensor:
    """A stand-in teacher whose output is a known function of its input."""
    return F.interpolate(lr, scale_factor=4, mode="nearest")


@pytest.fixture
def crops(tmp_path: Path) -> HRImageDataset:
    rng = np.random.default_rng(0)
    folder = tmp_path / "hr"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return HRImageDataset([ImageSource(folder)], CROP, seed=0, length=2**62, augment=False)


def _spec(folder: Path, samples: int = 6, key: str = "k") -> CacheSpec:
    return CacheSpec(folder, key, samples=samples, shard_size=4, seed=0)


def _build(spec: CacheSpec, crops: HRImageDataset, calls: list[int]) -> int:
    def factory():
        calls.append(1)
        return _nearest_teacher

    return build_cache(spec, crops, [(MILD, 1.0), (PHOTO, 1.0)], factory, batch_size=3)


def test_cache_is_deterministic_resumable_and_complete(tmp_path: Path, crops: HRImageDataset) -> None:
    calls: list[int] = []
    first = _spec(tmp_path / "a")
    assert _build(first, crops, calls) == 2 and len(calls) == 1  # 6 samples in shards of 4
    again = _spec(tmp_path / "b")
    _build(again, crops, calls)
    for shard in range(first.shards):
        assert first.shard_path(shard).read_bytes() == again.shard_path(shard).read_bytes()
    assert _build(first, crops, calls) == 0 and len(calls) == 2  # nothing missing: no teacher is even made
    first.shard_path(1).unlink()
    assert _build(first, crops, calls) == 1
    assert first.shard_path(1).read_bytes() == again.shard_path(1).read_bytes()
    assert not list(first.root.glob("*.tmp*"))  # written through a temporary name
    cache = TeacherCache(first, augment_samples=False)
    assert len(cache) == 6
    batch = cache.batch([0, 7], torch.Generator().manual_seed(0), torch.device("cpu"))
    assert batch["hr"].shape == (2, 3, CROP, CROP) and batch["lr"].shape == (2, 3, CROP // 4, CROP // 4)
    torch.testing.assert_close(batch["teacher"], _nearest_teacher(batch["lr"]), atol=1 / 255, rtol=0)
    torch.testing.assert_close(batch["lr"][1], cache.batch([1], torch.Generator(), torch.device("cpu"))["lr"][0])


def test_augmentation_is_shared_by_the_three_images(tmp_path: Path, crops: HRImageDataset) -> None:
    spec = _spec(tmp_path)
    _build(spec, crops, [])
    plain = TeacherCache(spec, augment_samples=False).batch(range(6), torch.Generator(), torch.device("cpu"))
    augmented = TeacherCache(spec).batch(range(6), torch.Generator().manual_seed(5), torch.device("cpu"))
    assert not torch.equal(plain["hr"], augmented["hr"])  # some sample was flipped or turned
    torch.testing.assert_close(augmented["teacher"], _nearest_teacher(augmented["lr"]), atol=1 / 255, rtol=0)
    for b in range(6):  # each augmented HR is a flip / turn of its plain HR
        views = [torch.rot90(img, k, dims=(-2, -1)) for img in (plain["hr"][b], plain["hr"][b].flip(-1)) for k in range(4)]
        assert any(torch.equal(view, augmented["hr"][b]) for view in views)


def test_a_missing_shard_is_an_error_and_keys_follow_their_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="shard"):
        TeacherCache(_spec(tmp_path))
    base = {"teacher": "abc", "crop": 256, "seed": 0}
    assert cache_key(base) == cache_key(dict(reversed(base.items())))
    assert cache_key(base) != cache_key({**base, "seed": 1}) != cache_key({**base, "teacher": "abd"})
