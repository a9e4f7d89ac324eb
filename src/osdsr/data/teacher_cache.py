"""A disk cache of teacher outputs for distillation: (HR crop, degraded LR, teacher's SR of the LR) triples.

A teacher such as Real-ESRGAN x4plus costs about 1.4 s per 64x64 LR crop on this 2-core CPU, far more
than a student's training step, so its outputs are computed once. Sample ``i`` is a pure function of
the cache key and ``i``: the HR crop is item ``i`` of an ``HRImageDataset`` seeded with the cache seed
(which image, where), the degradation is drawn from a generator seeded by ``(seed, i, 1)``, and the
teacher's output is of that LR. The key hashes everything a sample depends on (teacher weights, image
sources, exclusions, crop, degradation mix, seed), so a changed input never reads stale samples, and
a larger ``samples`` reuses the shards already built.

Shards of ``shard_size`` samples are ``safetensors`` files of 8-bit tensors, written to a temporary
name and renamed: an interrupted build resumes at the first missing shard. Augmentation (flips,
quarter turns) happens when batches are drawn, the same for the three images of a sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from osdsr.data.datasets import HRImageDataset, augment
from osdsr.data.degradation import DegradationConfig, degrade

logger = logging.getLogger(__name__)

KEYS = ("hr", "lr", "teacher")
Teacher = Callable[[torch.Tensor], torch.Tensor]  # LR crops [B, 3, h, w] in [0, 1] -> SR [B, 3, s*h, s*w]


@dataclass(frozen=True)
class CacheSpec:
    """Where the cache lives and what its samples depend on."""

    folder: Path
    key: str  # hex digest naming the cache's sub-folder
    samples: int
    shard_size: int
    seed: int

    @property
    def root(self) -> Path:
        return self.folder / self.key

    @property
    def shards(self) -> int:
        return -(-self.samples // self.shard_size)

    def shard_path(self, shard: int) -> Path:
        return self.root / f"shard-{shard:05d}.safetensors"


def cache_key(parts: dict) -> str:
    """A short stable digest of a JSON-ready description of everything a sample depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def degradation_generator(seed: int, index: int) -> torch.Generator:
    """The degradation stream of sample ``index`` (independent of the crop stream of the same index)."""
    state = np.random.SeedSequence([seed, index, 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return torch.clamp((images * 255.0).round(), 0, 255).to(torch.uint8)


def build_shard(
    spec: CacheSpec,
    shard: int,
    dataset: HRImageDataset,
    presets: Sequence[tuple[DegradationConfig, float]],
    teacher: Teacher,
    batch_size: int,
    scale: int = 4,
) -> None:
    """Compute and atomically write one shard."""
    from osdsr.weights_io import atomic_write_safetensors

    first = shard * spec.shard_size
    indices = range(first, min(first + spec.shard_size, spec.samples))
    hr = torch.stack([dataset[i]["hr"] for i in indices])
    names = [str(dataset[i]["name"]) for i in indices]
    lr = torch.cat(
        [degrade(hr[k : k + 1], presets, degradation_generator(spec.seed, i), scale=scale).lr for k, i in enumerate(indices)]
    )
    sr = torch.cat([teacher(lr[k : k + batch_size]) for k in range(0, len(indices), batch_size)])
    tensors = {"hr": _to_uint8(hr), "lr": _to_uint8(lr), "teacher": _to_uint8(sr)}
    # one metadata key: safetensors writes several in no fixed order, and a rebuilt shard must be byte-identical
    atomic_write_safetensors(tensors, spec.shard_path(shard), {"samples": json.dumps({"first": first, "names": names})})


def build_cache(
    spec: CacheSpec,
    dataset: HRImageDataset,
    presets: Sequence[tuple[DegradationConfig, float]],
    teacher_factory: Callable[[], Teacher],
    batch_size: int = 4,
    scale: int = 4,
) -> int:
    """Build every missing shard (the teacher is made only when one is missing); returns how many were built."""
    missing = [j for j in range(spec.shards) if not spec.shard_path(j).is_file()]
    if not missing:
        return 0
    spec.root.mkdir(parents=True, exist_ok=True)
    teacher = teacher_factory()
    start = time.time()
    for done, shard in enumerate(missing, 1):
        build_shard(spec, shard, dataset, presets, teacher, batch_size, scale)
        elapsed = time.time() - start
        logger.info(
            "teacher cache %s: shard %d/%d (%d missing left), %.0f s so far, about %.0f s to go",
            spec.key, done, len(missing), len(missing) - done, elapsed, elapsed / done * (len(missing) - done),
        )
    return len(missing)


class TeacherCache:
    """The cached triples in memory (8-bit): ``batch(indices, rng, device)`` -> {"lr", "hr", "teacher"} in [0, 1]."""

    def __init__(self, spec: CacheSpec, augment_samples: bool = True) -> None:
        from osdsr.weights_io import read_safetensors

        self.spec = spec
        self.augment = augment_samples
        parts: dict[str, list[torch.Tensor]] = {key: [] for key in KEYS}
        for shard in range(spec.shards):
            path = spec.shard_path(shard)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: teacher cache shard missing; build the cache first")
            tensors, _ = read_safetensors(path)
            for key in KEYS:
                parts[key].append(tensors[key])
        self.tensors = {key: torch.cat(parts[key])[: spec.samples] for key in KEYS}

    def __len__(self) -> int:
        return self.spec.samples

    def batch(self, indices: Sequence[int], rng: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """Samples ``indices`` (modulo the cache size), each with its own flip / turn drawn from ``rng``."""
        seed = int(torch.randint(2**62, (1,), generator=rng, device=rng.device))
        flips = torch.Generator().manual_seed(seed)  # augmentation draws on the CPU, whatever rng's device
        items = []
        for index in indices:
            sample = [self.tensors[key][index % self.spec.samples].float() / 255.0 for key in KEYS]
            items.append(augment(sample, flips) if self.augment else sample)
        return {key: torch.stack([item[k] for item in items]).to(device) for k, key in enumerate(KEYS)}
