"""Reading and writing images for super-resolution: every common format, bit depth and colour mode.

``load_image`` returns float32 pixels in ``[0, 1]`` (HxWx1 gray or HxWx3 RGB), the alpha channel
separately, the bit depth to write back (8 or 16) and the metadata to carry to the output (ICC
profile, EXIF, PNG text). EXIF orientation is applied, so pixels are upright, and reset to 1 in the
carried EXIF. A file that cannot be decoded raises one ``ValueError`` naming the file, what is wrong and
what to do. ``save_image`` writes to a temporary name in the same folder and renames it into place, and
refuses to replace an existing file unless asked.

Pillow has no 16-bit colour modes: it decodes 16-bit RGB(A) PNG/TIFF to 8 bits. Here such files are
decoded twice, once for the high and once for the low byte of every sample (see ``_read_16bit_colour``),
and written by the small PNG/TIFF encoders at the end of this module.
"""

from __future__ import annotations

import logging
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from osdsr.choices import FORMAT_SUFFIX, IMAGE_FORMATS
from osdsr.weights_io import atomic_path

logger = logging.getLogger(__name__)

SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF"})  # the others store 8 bits per sample
ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})  # Pillow reads a 32-bit BMP's fourth byte as padding
JPEG_QUALITY = 95
# zlib level and strategy of PNG outputs (benchmarks/out/speed.md): level 1 writes a 2048x2048 photo about
# 6x faster than Pillow's default 6; the run-length strategy is faster again (8-bit 0.43 vs 0.53 s, 16-bit
# 0.52 vs 1.19 s) and, after PNG's row filters, as small as level 6 on photographs
PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_STRATEGY = zlib.Z_RLE
WEBP_QUALITY = 95
ORIENTATION_TAG = 0x0112  # EXIF/TIFF "Orientation"
METADATA_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})  # store an ICC profile and EXIF (BMP: neither)


@dataclass(frozen=True)
class LoadedImage:
    """An upright image: ``pixels`` HxWxC float32 in [0, 1] with C = 1 (gray) or 3 (RGB); a result of
    ``upscale_image_to_samples`` holds uint8 / uint16 samples of its ``bit_depth`` instead."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None  # HxW float32 in [0, 1], or None when the image is opaque
    bit_depth: int = 8  # 8 or 16: the sample depth of the source, used when writing the result
    format: str | None = None  # Pillow format name of the source file ("PNG", "JPEG", ...)
    icc_profile: bytes | None = None  # embedded colour profile, carried to the output
    exif: bytes | None = None  # EXIF block with its orientation reset to 1 (the pixels are upright), carried
    text: tuple[tuple[str, str], ...] = ()  # PNG text chunks (key, value), carried to PNG outputs

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_gray(self) -> bool:
        return self.pixels.shape[2] == 1


class _UnsupportedImage(ValueError):
    """A decodable image in a sample format this project does not handle."""


def load_image(path: str | Path) -> LoadedImage:
    """Decode ``path`` into an upright :class:`LoadedImage`; one clear ``ValueError`` if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes); re-export or re-download it")
    try:
        with Image.open(path) as img:
            sixteen_bit_colour = _is_16bit_colour(img)  # read the tiles before load() consumes them
            img.load()
            source_format = img.format
            icc_profile = img.info.get("icc_profile")
            text = tuple((str(k), str(v)) for k, v in (getattr(img, "text", None) or {}).items())
            if sixteen_bit_colour:
                pixels, alpha = _read_16bit_colour(path, img)
                bit_depth = 16
            else:
                upright = ImageOps.exif_transpose(img)
                pixels, alpha, bit_depth = _pixels_from_pil(path, upright)
            exif = _upright_exif(img)  # after the orientation was applied: this resets it
            frames = getattr(img, "n_frames", 1)
        if frames > 1:  # animated GIF/WebP, multi-page TIFF
            logger.warning(
                "%s: has %d frames; only the first is used (split it into single images to process every frame)",
                path,
                frames,
            )
    except Image.UnidentifiedImageError:
        raise ValueError(
            f"{path}: not a readable image (unknown or corrupt format); use PNG, JPEG, WebP, TIFF or BMP"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: image too large to decode safely ({exc}); split or shrink it first") from None
    except _UnsupportedImage:
        raise
    except Exception as exc:  # Pillow's decoders raise many exception types on damaged data
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ValueError(
            f"{path}: truncated or corrupt image data ({reason}); re-export or re-download the file"
        ) from None
    return LoadedImage(pixels, alpha, bit_depth, source_format, icc_profile, exif, text)


def _upright_exif(img: Image.Image) -> bytes | None:
    """The file's EXIF block with the orientation tag reset to 1 (loading applies it), or None."""
    if "exif" not in img.info:  # a TIFF's own tags are no EXIF block
        return None
    exif = img.getexif()
    if ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1
    return exif.tobytes()


def _pixels_from_pil(path: Path, img: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Float pixels, alpha and bit depth of a Pillow image in any mode Pillow decodes to."""
    mode = img.mode
    if mode.startswith("I;16"):
        gray = np.asarray(img).astype(np.float32) / 65535.0
        return gray[..., None], None, 16
    if mode == "I":
        values = np.asarray(img)
        if values.min() < 0 or values.max() > 65535:
            raise _UnsupportedImage(
                f"{path}: 32-bit integer samples outside 0..65535; convert it to an 8- or 16-bit image"
            )
        return (values.astype(np.float32) / 65535.0)[..., None], None, 16
    if mode == "F":
        raise _UnsupportedImage(f"{path}: 32-bit float images are not supported; convert it to an 8- or 16-bit image")
    if mode in ("1", "L"):
        gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return gray[..., None], None, 8
    if mode == "LA" or (mode == "P" and _palette_is_gray(img) and "transparency" not in img.info):
        gray_alpha = np.asarray(img.convert("LA"), dtype=np.float32) / 255.0
        alpha = gray_alpha[..., 1] if mode == "LA" else None
        return gray_alpha[..., :1], alpha, 8
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3], rgba[..., 3], 8
    # RGB, P without transparency, CMYK, YCbCr, LAB, HSV: Pillow's own conversion to RGB
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, None, 8


def _palette_is_gray(img: Image.Image) -> bool:
    palette = img.getpalette() or []
    triples = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
    return bool(triples.size) and bool((triples == triples[:, :1]).all())


def _tile_rawmode(tile) -> str:
    return tile.args if isinstance(tile.args, str) else tile.args[0]


def _is_16bit_colour(img: Image.Image) -> bool:
    """True for 16-bit RGB/RGBA files, which Pillow decodes to 8 bits per sample."""
    return img.mode in ("RGB", "RGBA") and any(";16" in _tile_rawmode(tile) for tile in img.tile or [])


def _read_16bit_colour(path: Path, img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-precision 16-bit RGB(A): decode once as is (high bytes), once with the byte order flipped.

    Pillow unfilters/decompresses the raw bytes and then keeps the most significant byte of each
    16-bit sample, as named by the tile's raw mode (``;16B`` big-endian, ``;16L`` little, ``;16N``
    native). Decoding a second time with the opposite byte order named keeps the least significant
    byte instead; the two together are the exact 16-bit samples.
    """
    high = np.asarray(img).astype(np.uint16)
    with Image.open(path) as second:
        second.tile = [tile._replace(args=_flip_byte_order(tile.args)) for tile in second.tile]
        second.load()
        low = np.asarray(second).astype(np.uint16)
        orientation = second.getexif().get(ORIENTATION_TAG, 1)
    samples = _apply_orientation((high << 8) | low, orientation).astype(np.float32) / 65535.0
    alpha = samples[..., 3] if samples.shape[2] == 4 else None
    return np.ascontiguousarray(samples[..., :3]), alpha


def _flip_byte_order(args):
    native_other = ";16B" if sys.byteorder == "little" else ";16L"
    swap = {";16B": ";16L", ";16L": ";16B", ";16N": native_other}

    def flip(rawmode: str) -> str:
        for old, new in swap.items():
            if old in rawmode:
                return rawmode.replace(old, new)
        return rawmode

    return flip(args) if isinstance(args, str) else (flip(args[0]), *args[1:])


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Make an HxWxC array upright for EXIF orientation 1..8 (same result as ``ImageOps.exif_transpose``)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, k=1),
    }
    return np.ascontiguousarray(ops[orientation](array)) if orientation in ops else array


def save_image(
    path: str | Path,
    image: LoadedImage,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` to ``path`` (format from the suffix) via a temporary file in the same folder.

    16-bit depth is kept for PNG and TIFF and reduced to 8 bits for JPEG, WebP and BMP. Raises
    ``FileExistsError`` if ``path`` exists and ``overwrite`` is false, also when another process
    creates it while this one writes (the final name is created exclusively).
    """
    path = Path(path)
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt not in FORMAT_SUFFIX:
        raise ValueError(f"{path}: cannot write this suffix; use one of {sorted(FORMAT_SUFFIX.values())}")
    if image.alpha is not None and fmt not in ALPHA_FORMATS:
        raise ValueError(f"{path}: {fmt} cannot store an alpha channel; write a .png instead")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite (--overwrite) to replace it")
    if not path.parent.is_dir():
        raise NotADirectoryError(f"{path.parent}: output folder does not exist")
    bit_depth = image.bit_depth if fmt in SIXTEEN_BIT_FORMATS else 8
    with atomic_path(path, exclusive=not overwrite) as temporary, open(temporary, "wb") as stream:
        if bit_depth == 16 and not image.is_gray:
            samples = _quantize(_with_alpha(image), 16)
            _encode_16bit_colour(stream, samples, fmt, image)
        else:
            _to_pil(image, bit_depth).save(stream, format=fmt, **_save_options(fmt, image))
    return path


def _with_alpha(image: LoadedImage) -> np.ndarray:
    if image.alpha is None:
        return image.pixels
    return np.concatenate([image.pixels, image.alpha[..., None]], axis=2)


def _quantize(samples: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float samples in [0, 1] (or integer samples of another depth) as ``bit_depth`` samples."""
    top = 65535 if bit_depth == 16 else 255
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    if samples.dtype == dtype:  # already samples of this depth (osdsr.inference.upscale_image_to_samples)
        return samples
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) / np.iinfo(samples.dtype).max
    return np.rint(np.clip(samples, 0.0, 1.0) * top).astype(dtype)


def _to_pil(image: LoadedImage, bit_depth: int) -> Image.Image:
    if bit_depth == 16:  # 16-bit gray, opaque (alpha with 16-bit gray falls back to 8 bits below)
        if image.alpha is None:
            return Image.fromarray(_quantize(image.pixels[..., 0], 16))
        logger.warning("16-bit gray with alpha is written with 8 bits per sample (Pillow has no such mode)")
    samples = _quantize(_with_alpha(image), 8)
    return Image.fromarray(samples[..., 0] if samples.shape[2] == 1 else samples)  # L, LA, RGB or RGBA


def _save_options(fmt: str, image: LoadedImage) -> dict:
    """Pillow save options: quality, and the metadata (ICC profile, EXIF, PNG text) the format stores."""
    options: dict = {}
    if image.icc_profile and fmt in METADATA_FORMATS:
        options["icc_profile"] = image.icc_profile
    if image.exif and fmt in METADATA_FORMATS:
        options["exif"] = image.exif
    if image.text and fmt == "PNG":
        info = PngInfo()
        for key, value in image.text:
            info.add_text(key, value)
        options["pnginfo"] = info
    if fmt == "PNG":
        options.update(compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_COMPRESS_STRATEGY)
    elif fmt == "JPEG":
        options["quality"] = JPEG_QUALITY
    elif fmt == "WEBP":
        options["quality"] = WEBP_QUALITY
        options["exact"] = True  # keep the colour of transparent pixels (the encoder may drop it otherwise)
    return options


def _encode_16bit_colour(stream, samples: np.ndarray, fmt: str, image: LoadedImage) -> None:
    """Write HxWxC uint16 samples (C = 3 or 4) as a 16-bit PNG (with ``image``'s metadata) or an
    uncompressed 16-bit TIFF (without metadata)."""
    if fmt == "PNG":
        _write_png16(stream, samples, _png_metadata_chunks(image))
    else:
        _write_tiff16(stream, samples)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_metadata_chunks(image: LoadedImage) -> list[bytes]:
    """PNG spec chunks: iCCP (zlib profile), eXIf (raw EXIF), tEXt (Latin-1) or iTXt (UTF-8) text."""
    chunks = []
    if image.icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(image.icc_profile)))
    if image.exif:
        chunks.append(_png_chunk(b"eXIf", image.exif.removeprefix(b"Exif\0\0")))
    for key, value in image.text:
        try:
            chunks.append(_png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:
            chunks.append(_png_chunk(b"iTXt", key.encode("utf-8") + b"\0\0\0\0\0" + value.encode("utf-8")))
    return chunks


def _write_png16(stream, samples: np.ndarray, metadata_chunks: list[bytes]) -> None:
    """PNG spec: IHDR (bit depth 16, colour type 2 RGB / 6 RGBA), rows prefixed by filter byte 0."""
    height, width, channels = samples.shape
    rows = samples.astype(">u2").view(np.uint8).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    colour_type = 6 if channels == 4 else 2
    stream.write(b"\x89PNG\r\n\x1a\n")
    stream.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)))
    stream.write(b"".join(metadata_chunks))
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 9, PNG_COMPRESS_STRATEGY)
    stream.write(_png_chunk(b"IDAT", compressor.compress(raw) + compressor.flush()))
    stream.write(_png_chunk(b"IEND", b""))


def _write_tiff16(stream, samples: np.ndarray) -> None:
    """Baseline little-endian TIFF 6.0: one uncompressed strip, chunky RGB(A), 16 bits per sample."""
    height, width, channels = samples.shape
    pixel_bytes = samples.astype("<u2").tobytes()
    short, long = 3, 4  # TIFF field types
    entries = [  # (tag, field type, values), sorted by tag as TIFF requires
        (256, long, [width]),  # ImageWidth
        (257, long, [height]),  # ImageLength
        (258, short, [16] * channels),  # BitsPerSample
        (259, short, [1]),  # Compression: none
        (262, short, [2]),  # PhotometricInterpretation: RGB
        (273, long, [None]),  # StripOffsets: the pixel data follows the header
        (277, short, [channels]),  # SamplesPerPixel
        (278, long, [height]),  # RowsPerStrip
        (279, long, [len(pixel_bytes)]),  # StripByteCounts
        (284, short, [1]),  # PlanarConfiguration: chunky
    ] + ([(338, short, [2])] if channels == 4 else [])  # ExtraSamples: unassociated alpha
    ifd_offset = 8
    overflow_offset = ifd_offset + 2 + 12 * len(entries) + 4
    bits_per_sample = struct.pack(f"<{channels}H", *([16] * channels))  # 6-8 bytes: stored after the IFD
    pixel_offset = overflow_offset + len(bits_per_sample)
    ifd = struct.pack("<H", len(entries))
    for tag, kind, values in entries:
        if tag == 258:
            ifd += struct.pack("<HHII", tag, kind, channels, overflow_offset)
        elif kind == short:
            ifd += struct.pack("<HHIHH", tag, kind, 1, values[0], 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, 1, pixel_offset if tag == 273 else values[0])
    ifd += struct.pack("<I", 0)  # no next IFD
    stream.write(b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + bits_per_sample + pixel_bytes)


def image_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """HxWxC float numpy image -> ``[1, C, H, W]`` float32 tensor (shares no memory with the input)."""
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0).clone()


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """``[1, C, H, W]`` or ``[C, H, W]`` tensor -> HxWxC float32 numpy image."""
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"tensor_to_image: expected one image, got a batch of {tensor.shape[0]}")
        tensor = tensor[0]
    return tensor.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()
