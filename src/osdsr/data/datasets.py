"""Datasets of real photographs: HR-only random crops (degraded on the fly) and aligned LR/HR pairs.

Randomness is stateless per index: item ``i`` draws everything (which image, where to crop, which
flip / rotation) from a generator seeded by ``(seed, i)`` alone, so any item — and therefore any batch
of a resumed training run — can be recomputed without replaying the items before it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from osdsr.data.image_io import IMAGE_FORMATS, ORIENTATION_TAG, load_image

logger = logging.getLogger(__name__)

# an image with a side shorter than this fraction of the crop is skipped rather than mostly mirrored
MIN_SIDE_FRACTION = 0.5


@dataclass(frozen=True)
class ImageSource:
    """A folder of images (searched recursively) or a ``.txt`` list of image paths, with a sampling weight.

    Relative paths in a list are relative to the list's folder; blank lines and ``#`` comments are skipped.
    """

    path: str | Path
    weight: float = 1.0
    in_memory: bool = True  # decode every image once, up front; False: read sizes only, decode per item


@dataclass(frozen=True)
class _SourceImage:
    name: str  # path relative to its source folder (or as written in the list)
    path: Path
    size: tuple[int, int]  # (height, width) after EXIF rotation and padding to the crop
    pixels: np.ndarray | None  # HxWxC uint8, C = 1 or 3, padded to at least crop x crop; None: decoded per item


class HRImageDataset(Dataset):
    """Random ``crop_size`` HR crops from weighted image sources: items ``{"hr": [3, c, c] in [0, 1], "name"}``.

    Every image is decoded once, at construction, and kept in memory as 8-bit samples, unless its source
    says ``in_memory=False``: then only the image headers are read up front and each item decodes its
    image (same items either way; for training sets too large for memory). Gray images
    become 3-channel. An image smaller than the crop is reflect-padded up to it; one with a side shorter
    than half the crop is skipped with a warning, as is a file that cannot be decoded (an on-disk image
    that fails when an item reads it gives way to the source's next image, with one warning). ``exclude``
    names files never used (by file name, path relative to the source folder, or full path), e.g. a
    held-out split. ``length`` is the nominal length; larger indices wrap around (``index % length``).
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        crop_size: int,
        *,
        seed: int,
        length: int,
        augment: bool = True,
        exclude: Iterable[str | Path] = (),
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size {crop_size}: must be a positive number of pixels")
        if length < 1:
            raise ValueError(f"length {length}: must be at least 1")
        if not sources:
            raise ValueError("sources: give at least one ImageSource")
        if any(source.weight <= 0 for source in sources):
            raise ValueError(f"source weights {[s.weight for s in sources]}: each must be positive")
        self.crop_size = crop_size
        self.seed = seed
        self.length = length
        self.augment = augment
        excluded = {str(item) for item in exclude}
        self._reported: set[Path] = set()  # on-disk images found unusable, warned about once
        self.weights = tuple(float(source.weight) for source in sources)
        self.images: tuple[tuple[_SourceImage, ...], ...] = tuple(
            self._load_source(source, excluded) for source in sources
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if index < 0:
            raise IndexError(f"index {index}: must be non-negative")
        generator = item_generator(self.seed, index % self.length)
        source = _choice(generator, self.weights)
        images = self.images[source]
        first = int(torch.randint(len(images), (1,), generator=generator))
        image, pixels = self._usable_image(images, first)
        height, width = image.size
        top = int(torch.randint(height - self.crop_size + 1, (1,), generator=generator))
        left = int(torch.randint(width - self.crop_size + 1, (1,), generator=generator))
        crop = pixels[top : top + self.crop_size, left : left + self.crop_size]
        (hr,) = augment([_to_tensor(crop)], generator) if self.augment else (_to_tensor(crop),)
        return {"hr": hr, "name": image.name}

    def _usable_image(self, images: tuple[_SourceImage, ...], first: int) -> tuple[_SourceImage, np.ndarray]:
        """Image ``first`` of a source and its pixels; when it no longer decodes (an on-disk source), the
        next one that does, so an item depends on the files alone, not on what failed before."""
        for offset in range(len(images)):
            image = images[(first + offset) % len(images)]
            if image.pixels is not None:
                return image, image.pixels
            try:
                return image, self._decode(image.path, image.size)
            except (ValueError, OSError) as exc:
                if image.path not in self._reported:
                    self._reported.add(image.path)
                    logger.warning("skipping %s", exc)  # the message names the file
        raise ValueError(f"{images[first].path.parent}: no image of this source decodes any more; check the files")

    def _decode(self, path: Path, expected: tuple[int, int] | None = None) -> np.ndarray:
        """The image as 8-bit samples padded to the crop (``ValueError`` naming the file when unusable)."""
        pixels = load_image(path).pixels
        height, width = pixels.shape[:2]
        if min(height, width) < MIN_SIDE_FRACTION * self.crop_size:
            raise ValueError(
                f"{path}: {width}x{height} has a side shorter than {MIN_SIDE_FRACTION * self.crop_size:g} pixels"
            )
        pixels = _pad_to(_to_uint8(pixels), self.crop_size)
        if expected is not None and pixels.shape[:2] != expected:
            raise ValueError(f"{path}: decodes to {pixels.shape[:2]}, its header said {expected}; was it replaced?")
        return pixels

    def _header_size(self, path: Path) -> tuple[int, int]:
        """(height, width) as ``_decode`` will give it, from the header alone (EXIF rotation applied)."""
        try:
            with Image.open(path) as img:
                width, height = img.size
                if img.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8):  # a quarter turn swaps the sides
                    width, height = height, width
        except (OSError, Image.UnidentifiedImageError):
            raise ValueError(f"{path}: not a readable image (unknown or corrupt format)") from None
        if min(height, width) < MIN_SIDE_FRACTION * self.crop_size:
            raise ValueError(
                f"{path}: {width}x{height} has a side shorter than {MIN_SIDE_FRACTION * self.crop_size:g} pixels"
            )
        return max(height, self.crop_size), max(width, self.crop_size)

    def _load_source(self, source: ImageSource, excluded: set[str]) -> tuple[_SourceImage, ...]:
        images = []
        for name, path in _list_source(Path(source.path)):
            if excluded & {name, path.name, str(path), str(path.resolve())}:
                continue
            try:
                if source.in_memory:
                    pixels = self._decode(path)
                    images.append(_SourceImage(name, path, pixels.shape[:2], pixels))
                else:
                    images.append(_SourceImage(name, path, self._header_size(path), None))
            except ValueError as exc:
                logger.warning("skipping %s", exc)  # the message names the file
        if not images:
            raise ValueError(f"{source.path}: no usable image (none decodes, all excluded or all too small)")
        return tuple(images)


class PairedImageDataset(Dataset):
    """Aligned LR/HR pairs matched by file stem: items ``{"lr", "hr", "name"}``, tensors in [0, 1].

    Each HR image must be exactly ``scale`` times its LR image. With ``crop_size`` (HR pixels, a multiple
    of ``scale``) each item is a random crop at the same place in both; otherwise whole images. Images
    are decoded on access (nothing is cached); gray images become 3-channel.
    """

    def __init__(
        self,
        lr_dir: str | Path,
        hr_dir: str | Path,
        *,
        scale: int = 4,
        crop_size: int | None = None,
        seed: int,
        augment: bool,
    ) -> None:
        if crop_size is not None and (crop_size < scale or crop_size % scale):
            raise ValueError(f"crop_size {crop_size}: must be a positive multiple of scale {scale}")
        lr_files, hr_files = _files_by_stem(Path(lr_dir)), _files_by_stem(Path(hr_dir))
        only_lr, only_hr = sorted(set(lr_files) - set(hr_files)), sorted(set(hr_files) - set(lr_files))
        if only_lr or only_hr:
            raise ValueError(
                f"{lr_dir} and {hr_dir} do not pair up by file name: "
                f"{len(only_lr)} LR without HR {only_lr[:5]}, {len(only_hr)} HR without LR {only_hr[:5]}"
            )
        if not lr_files:
            raise ValueError(f"{lr_dir}: no images found")
        self.pairs = [(stem, lr_files[stem], hr_files[stem]) for stem in sorted(lr_files)]
        self.scale = scale
        self.crop_size = crop_size
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        stem, lr_path, hr_path = self.pairs[index]
        lr, hr = _to_tensor(load_image(lr_path).pixels), _to_tensor(load_image(hr_path).pixels)
        if hr.shape[1] != lr.shape[1] * self.scale or hr.shape[2] != lr.shape[2] * self.scale:
            raise ValueError(
                f"{hr_path}: HR is {hr.shape[2]}x{hr.shape[1]} but its LR {lr_path.name} is "
                f"{lr.shape[2]}x{lr.shape[1]}; HR must be exactly x{self.scale} the LR"
            )
        generator = item_generator(self.seed, index)
        if self.crop_size is not None:
            lr_crop = self.crop_size // self.scale
            if min(lr.shape[1:]) < lr_crop:
                raise ValueError(f"{lr_path}: {lr.shape[2]}x{lr.shape[1]} is smaller than the LR crop {lr_crop}")
            top = int(torch.randint(lr.shape[1] - lr_crop + 1, (1,), generator=generator))
            left = int(torch.randint(lr.shape[2] - lr_crop + 1, (1,), generator=generator))
            lr = lr[:, top : top + lr_crop, left : left + lr_crop]
            s = self.scale
            hr = hr[:, top * s : (top + lr_crop) * s, left * s : (left + lr_crop) * s]
        if self.augment:
            lr, hr = augment([lr, hr], generator)
        return {"lr": lr.contiguous(), "hr": hr.contiguous(), "name": stem}


def item_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator determined by ``(seed, index)`` alone (mixed through numpy's SeedSequence)."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def augment(images: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """The same random horizontal flip and rotation by k x 90 degrees for every ``[C, H, W]`` image."""
    flip = bool(torch.randint(2, (1,), generator=generator))
    turns = int(torch.randint(4, (1,), generator=generator))
    out = [image.flip(-1) if flip else image for image in images]
    return [torch.rot90(image, turns, dims=(-2, -1)).contiguous() for image in out]


def _list_source(path: Path) -> list[tuple[str, Path]]:
    """``(name, file)`` pairs of a source folder or ``.txt`` list, in a fixed (sorted / listed) order."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: image source not found (give a folder or a .txt list of images)")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_FORMATS)
        if not files:
            raise ValueError(f"{path}: no image files ({', '.join(sorted(IMAGE_FORMATS))}) in this folder")
        return [(p.relative_to(path).as_posix(), p) for p in files]
    if path.suffix.lower() != ".txt":
        raise ValueError(f"{path}: an image source must be a folder or a .txt list of image paths")
    lines = [line.strip() for line in path.read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise ValueError(f"{path}: the list names no image")
    return [(entry, path.parent / entry) for entry in entries]


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder of images")
    files: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FORMATS):
        if path.stem in files:
            clash = f"{files[path.stem].name}, {path.name}"
            raise ValueError(f"{folder}: two images share the name {path.stem!r} ({clash}); rename one")
        files[path.stem] = path
    return files


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def _pad_to(pixels: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad bottom/right so both sides are at least ``size`` (callers ensure sides >= size / 2)."""
    pad_h, pad_w = max(0, size - pixels.shape[0]), max(0, size - pixels.shape[1])
    if pad_h == 0 and pad_w == 0:
        return pixels
    return np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """HxWxC (uint8 or float in [0, 1]) -> ``[3, H, W]`` float32; gray is repeated to 3 channels."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor.contiguous()


def _choice(generator: torch.Generator, weights: Sequence[float]) -> int:
    probabilities = torch.tensor(weights, dtype=torch.float64)
    return int(torch.multinomial(probabilities, 1, generator=generator))
