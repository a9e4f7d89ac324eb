"""Image reading/writing: every bad input fails with one clear line; modes, depth, alpha, EXIF survive."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from osdsr.data.image_io import LoadedImage, image_to_tensor, load_image, save_image, tensor_to_image

ORIENTATION = 0x0112


def _rgb8(height: int = 12, width: int = 17, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def _encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _assert_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and ";" in message


# --- bad inputs ------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_one_line_error(path, "empty")


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    _assert_one_line_error(path, "not a readable image")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = _encoded(_rgb8(64, 64), "JPEG")
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    _assert_one_line_error(path, "truncated or corrupt")


def test_truncated_png(tmp_path: Path) -> None:
    data = _encoded(_rgb8(64, 64), "PNG")
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    _assert_one_line_error(path, "truncated or corrupt")


def test_corrupt_png_data(tmp_path: Path) -> None:
    data = bytearray(_encoded(_rgb8(64, 64), "PNG"))
    start = data.index(b"IDAT") + 20
    data[start : start + 8] = b"\xff" * 8  # damage the compressed pixel stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    _assert_one_line_error(path, "truncated or corrupt")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "absent.png")


# --- modes and depths ------------------------------------------------------------------------------


def test_rgb_jpeg_and_png_values(tmp_path: Path) -> None:
    rgb = _rgb8()
    (tmp_path / "x.png").write_bytes(_encoded(rgb, "PNG"))
    image = load_image(tmp_path / "x.png")
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (12, 17, 3)
    assert image.alpha is None and image.bit_depth == 8 and image.format == "PNG"
    np.testing.assert_array_equal(np.rint(image.pixels * 255).astype(np.uint8), rgb)


def test_gray_stays_gray(tmp_path: Path) -> None:
    gray = _rgb8()[..., 0]
    path = tmp_path / "gray.png"
    path.write_bytes(_encoded(gray, "PNG"))
    image = load_image(path)
    assert image.is_gray and image.pixels.shape == (12, 17, 1)
    save_image(tmp_path / "out.png", image)
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written), gray)


def test_rgba_keeps_alpha(tmp_path: Path) -> None:
    rgba = (np.random.default_rng(1).random((9, 11, 4)) * 255).astype(np.uint8)
    path = tmp_path / "rgba.png"
    path.write_bytes(_encoded(rgba, "PNG"))
    image = load_image(path)
    assert image.pixels.shape == (9, 11, 3) and image.alpha is not None and image.alpha.shape == (9, 11)
    save_image(tmp_path / "out.png", image)
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(written), rgba)


@pytest.mark.parametrize("suffix", [".webp", ".tif"])
def test_other_formats_roundtrip(tmp_path: Path, suffix: str) -> None:
    ramp = np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24)  # smooth, so lossy WebP stays close
    rgba = np.rint(np.stack([ramp, 0.9 * ramp, 0.8 * ramp + 0.1, ramp[::-1]], axis=2) * 255) / 255
    source = LoadedImage(rgba[..., :3].astype(np.float32), rgba[..., 3].astype(np.float32))
    if suffix == ".webp":
        pytest.importorskip("PIL.WebPImagePlugin")
    save_image(tmp_path / f"x{suffix}", source)
    image = load_image(tmp_path / f"x{suffix}")
    assert image.pixels.shape == (16, 24, 3) and image.alpha is not None
    tolerance = 0.05 if suffix == ".webp" else 0  # WebP is lossy at the default quality
    np.testing.assert_allclose(image.pixels, source.pixels, atol=tolerance)
    np.testing.assert_allclose(image.alpha, source.alpha, atol=tolerance)


def test_gray_alpha_and_palette_modes(tmp_path: Path) -> None:
    la = Image.fromarray(_rgb8()[..., :2].copy(), mode="LA")
    la.save(tmp_path / "la.png")
    image = load_image(tmp_path / "la.png")
    assert image.is_gray and image.alpha is not None

    palette = Image.fromarray(_rgb8()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    image = load_image(tmp_path / "p.png")
    assert image.pixels.shape[2] == 3 and image.alpha is not None and image.alpha.min() == 0.0


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.fromarray(_rgb8()).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    image = load_image(tmp_path / "cmyk.jpg")
    with Image.open(tmp_path / "cmyk.jpg") as reference:
        expected = np.asarray(reference.convert("RGB"), dtype=np.float32) / 255
    assert image.pixels.shape == (12, 17, 3) and image.alpha is None
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    rgb = _rgb8(10, 16)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # camera turned: display rotated 90 degrees clockwise
    (tmp_path / "rotated.jpg").write_bytes(_encoded(rgb, "JPEG", exif=exif, quality=100))
    image = load_image(tmp_path / "rotated.jpg")
    assert image.pixels.shape == (16, 10, 3)
    with Image.open(tmp_path / "rotated.jpg") as reference:
        expected = np.asarray(ImageOps.exif_transpose(reference), dtype=np.float32) / 255
    np.testing.assert_array_equal(image.pixels, expected)


def test_16bit_gray_png_keeps_16bit(tmp_path: Path) -> None:
    gray16 = (np.random.default_rng(2).random((7, 9)) * 65535).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png")
    assert image.bit_depth == 16 and image.is_gray
    np.testing.assert_array_equal(np.rint(image.pixels[..., 0] * 65535).astype(np.uint16), gray16)
    save_image(tmp_path / "out.png", image)
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(written), gray16)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16bit_colour_tiff_full_precision_and_orientation(tmp_path: Path, orientation: int) -> None:
    tifffile = pytest.importorskip("tifffile")  # an independent 16-bit RGB TIFF writer
    rgb16 = (np.random.default_rng(3).random((6, 10, 3)) * 65535).astype(np.uint16)
    path = tmp_path / "c16.tif"
    tifffile.imwrite(path, rgb16, photometric="rgb", extratags=[(274, "H", 1, orientation, False)])
    image = load_image(path)
    assert image.bit_depth == 16 and image.pixels.shape[2] == 3
    with Image.open(path) as high_bytes:  # Pillow: 8-bit decode (high bytes), same orientation rules
        expected_high = np.asarray(ImageOps.exif_transpose(high_bytes))
    samples = np.rint(image.pixels * 65535).astype(np.uint16)
    np.testing.assert_array_equal(samples >> 8, expected_high)
    assert sorted(samples.ravel().tolist()) == sorted(rgb16.ravel().tolist())


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_with_alpha_roundtrip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(4)
    pixels = rng.random((5, 8, 3)).astype(np.float32)
    alpha = rng.random((5, 8)).astype(np.float32)
    save_image(tmp_path / f"c16{suffix}", LoadedImage(pixels, alpha, bit_depth=16))
    image = load_image(tmp_path / f"c16{suffix}")
    assert image.bit_depth == 16 and image.alpha is not None
    np.testing.assert_allclose(image.pixels, pixels, atol=0.5 / 65535 + 1e-7)
    np.testing.assert_allclose(image.alpha, alpha, atol=0.5 / 65535 + 1e-7)
    with Image.open(tmp_path / f"c16{suffix}") as pillow:  # an independent reader sees the high bytes
        assert pillow.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(pillow)[..., :3], np.rint(pixels * 65535).astype(np.uint16) >> 8)


def test_16bit_colour_tiff_readable_by_tifffile(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    pixels = np.random.default_rng(5).random((4, 6, 3)).astype(np.float32)
    save_image(tmp_path / "c16.tif", LoadedImage(pixels, None, bit_depth=16))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "c16.tif"), np.rint(pixels * 65535).astype(np.uint16))


# --- writing ---------------------------------------------------------------------------------------


def test_save_refuses_to_overwrite_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    image = LoadedImage(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(FileExistsError, match="already exists"):
        save_image(path, image)
    assert path.read_bytes() == b"precious"
    save_image(path, image, overwrite=True)
    assert load_image(path).pixels.shape == (4, 4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.parametrize("suffix", [".jpg", ".bmp"])
def test_eight_bit_formats_reduce_depth_and_refuse_alpha(tmp_path: Path, suffix: str) -> None:
    pixels = np.full((4, 4, 3), 0.5, np.float32)
    save_image(tmp_path / f"x{suffix}", LoadedImage(pixels, None, bit_depth=16))
    assert load_image(tmp_path / f"x{suffix}").bit_depth == 8
    with pytest.raises(ValueError, match="alpha"):
        save_image(tmp_path / f"y{suffix}", LoadedImage(pixels, np.ones((4, 4), np.float32)))
    assert not (tmp_path / f"y{suffix}").exists()


def test_tensor_conversions_roundtrip() -> None:
    pixels = np.random.default_rng(6).random((5, 7, 3)).astype(np.float32)
    tensor = image_to_tensor(pixels)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor_to_image(tensor), pixels)


@pytest.mark.parametrize("sixteen_bit", [False, True])
def test_png_metadata_roundtrip(tmp_path: Path, sixteen_bit: bool) -> None:
    """ICC profile, EXIF and PNG text (Latin-1 and UTF-8) are read and written again, at both depths."""
    exif = Image.Exif()
    exif[ORIENTATION] = 3  # upside down
    exif[0x010F] = "maker"
    pixels = np.random.default_rng(5).random((4, 6, 3)).astype(np.float32)
    image = LoadedImage(
        pixels,
        bit_depth=16 if sixteen_bit else 8,
        icc_profile=b"not a real profile, carried as bytes",
        exif=exif.tobytes(),
        text=(("Title", "caf\xe9"), ("Caption", "\u65e5\u672c")),
    )
    save_image(tmp_path / "meta.png", image)
    loaded = load_image(tmp_path / "meta.png")
    assert loaded.bit_depth == image.bit_depth
    assert loaded.icc_profile == image.icc_profile and dict(loaded.text) == dict(image.text)
    reread = Image.Exif()
    reread.load(loaded.exif)
    assert reread[0x010F] == "maker" and reread[ORIENTATION] == 1  # applied on load, so reset
    np.testing.assert_allclose(loaded.pixels, pixels[::-1, ::-1], atol=0.5 / (65535 if sixteen_bit else 255) + 1e-7)


def _idat_zlib_level(path: Path) -> int:
    """The FLEVEL field of the first IDAT's zlib header: 0 fastest, 1 fast, 2 default, 3 maximum."""
    data = path.read_bytes()
    idat = data.index(b"IDAT")
    return data[idat + 5] >> 6


@pytest.mark.parametrize("bits", [8, 16])
def test_png_outputs_use_the_fast_zlib_level(tmp_path: Path, bits: int) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((32, 32, 3)).astype(np.float32)
    path = tmp_path / "out.png"
    save_image(path, LoadedImage(pixels, bit_depth=bits))
    assert _idat_zlib_level(path) == 0  # zlib level 1 (Pillow's default, 6, would read 2)
    assert np.abs(load_image(path).pixels - pixels).max() <= 0.5 / (2**bits - 1) + 1e-6
