"""``osdsr upscale`` end to end (bicubic model): batches survive bad files, nothing is overwritten."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from osdsr import __version__
from osdsr.cli import main
from osdsr.commands import upscale as upscale_command
from osdsr.models.classical import bicubic_upsample


def _rgb(height: int = 10, width: int = 13, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def _upscale(*args: str | Path) -> int:
    return main(["upscale", "--model", "bicubic", *map(str, args)])


@pytest.fixture
def good_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_rgb(seed=1)).save(folder / "photo.jpg", quality=95)
    Image.fromarray(_rgb(7, 9, seed=2)).save(folder / "odd.png")
    (folder / "readme.txt").write_text("not an image, and not picked up from a folder")
    return folder


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"osdsr {__version__}"


def test_folder_end_to_end(good_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _upscale(good_folder, "-o", out, "--color-fix", "none") == 0
    assert sorted(p.name for p in out.iterdir()) == ["odd.png", "photo.png"]
    with Image.open(out / "odd.png") as result:
        assert result.size == (36, 28) and result.mode == "RGB"
        lr = torch.from_numpy(_rgb(7, 9, seed=2)).permute(2, 0, 1)[None].float() / 255
        expected = bicubic_upsample(lr).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
        assert np.abs(np.asarray(result).astype(np.float32) - expected).max() <= 0.5 + 1e-3
    assert "2 written, 0 skipped, 0 failed" in capsys.readouterr().out


def test_bad_files_fail_one_by_one(good_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("hello")
    jpeg = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(jpeg, format="JPEG")
    (bad / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (bad / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    out = tmp_path / "out"
    code = _upscale(bad, good_folder / "photo.jpg", tmp_path / "missing.png", "-o", out)
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["photo.png"]
    for name in ("empty.png", "text.png", "truncated.jpg", "corrupt.jpg", "missing.png"):
        lines = [line for line in captured.err.splitlines() if name in line and "failed" in line]
        assert len(lines) >= 1, name
    assert "1 written, 0 skipped, 5 failed" in captured.err
    assert "Traceback" not in captured.err


def test_existing_output_is_skipped_unless_overwrite(
    good_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.png").write_bytes(b"keep me")
    assert _upscale(good_folder / "photo.jpg", "-o", out) == 0
    assert (out / "photo.png").read_bytes() == b"keep me"
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "0 written, 1 skipped, 0 failed" in captured.out
    assert _upscale(good_folder / "photo.jpg", "-o", out, "--overwrite") == 0
    with Image.open(out / "photo.png") as result:
        assert result.size == (52, 40)


def test_output_never_replaces_input(good_folder: Path) -> None:
    before = (good_folder / "odd.png").read_bytes()
    code = _upscale(good_folder / "odd.png", "-o", good_folder, "--format", "same", "--overwrite")
    assert code == 1 and (good_folder / "odd.png").read_bytes() == before


def test_special_modes_survive(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((np.random.default_rng(0).random((6, 5)) * 65535).astype(np.uint16)).save(src / "deep.png")
    Image.fromarray((np.random.default_rng(1).random((6, 5, 4)) * 255).astype(np.uint8)).save(src / "alpha.png")
    Image.fromarray(_rgb()[..., 0]).save(src / "gray.png")
    Image.fromarray(_rgb()).convert("CMYK").save(src / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise for display
    Image.fromarray(_rgb(10, 13)).save(src / "rotated.jpg", exif=exif)
    out = tmp_path / "out"
    assert _upscale(src, "-o", out, "--format", "same") == 0
    modes = {}
    for path in out.iterdir():
        with Image.open(path) as image:
            modes[path.name] = (image.mode, image.size)
    assert modes["deep.png"] == ("I;16", (20, 24))
    assert modes["alpha.png"] == ("RGBA", (20, 24))
    assert modes["gray.png"] == ("L", (52, 40))
    assert modes["cmyk.jpg"] == ("RGB", (52, 40))
    assert modes["rotated.jpg"] == ("RGB", (40, 52))


def test_fp16_on_cpu_is_a_clear_error(good_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _upscale(good_folder, "-o", tmp_path / "out", "--dtype", "fp16") == 2
    err = capsys.readouterr().err.strip()
    assert "fp16" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_no_images_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty_dir").mkdir()
    assert _upscale(tmp_path / "empty_dir", "-o", tmp_path / "out") == 2
    assert "no input images" in capsys.readouterr().err


def test_processes_split_the_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under accelerate (WORLD_SIZE > 1) every file goes to exactly one process."""
    import accelerate

    files = [Path(f"{i}.png") for i in range(7)]
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for rank in range(3):
        state = SimpleNamespace(process_index=rank, num_processes=3, device=torch.device("cpu"))
        monkeypatch.setattr(accelerate, "PartialState", lambda state=state: state)
        device, label, mine = upscale_command._distribute(files, None)
        assert device.type == "cpu" and label == f"[process {rank + 1}/3] "
        shares.extend(mine)
    assert sorted(shares) == sorted(files) and len(shares) == len(files)


@pytest.fixture
def nested_folder(tmp_path: Path) -> Path:
    root = tmp_path / "album"
    (root / "2024" / "june").mkdir(parents=True)
    Image.fromarray(_rgb(seed=3)).save(root / "top.png")
    Image.fromarray(_rgb(seed=4)).save(root / "2024" / "june" / "deep.jpg", quality=95)
    return root


def test_recursive_keeps_the_sub_folder_layout(nested_folder: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    assert _upscale(nested_folder, "-o", flat) == 0
    assert [p.relative_to(flat).as_posix() for p in sorted(flat.rglob("*.png"))] == ["top.png"]
    out = nested_folder / "x4"  # the output inside the input folder is not read back on a re-run
    for _ in range(2):
        assert _upscale(nested_folder, "-o", out, "--recursive") == 0
    assert [p.relative_to(out).as_posix() for p in sorted(out.rglob("*"))] == [
        "2024", "2024/june", "2024/june/deep.png", "top.png"
    ]
    with Image.open(out / "2024" / "june" / "deep.png") as result:
        assert result.size == (52, 40)


def test_suffix_names_the_outputs(good_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _upscale(good_folder, "-o", out, "--suffix", "_x4", "--format", "same") == 0
    assert sorted(p.name for p in out.iterdir()) == ["odd_x4.png", "photo_x4.jpg"]
    assert _upscale(good_folder, "-o", out, "--suffix", "a/b") == 2


def test_dry_run_lists_and_writes_nothing(
    nested_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out / "2024" / "june").mkdir(parents=True)
    (out / "2024" / "june" / "deep_x4.png").write_bytes(b"old")
    assert _upscale(nested_folder, "-o", out, "-r", "--suffix", "_x4", "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"would skip (exists): {out / '2024' / 'june' / 'deep_x4.png'} <- {nested_folder / '2024' / 'june' / 'deep.jpg'}",
        f"would write: {out / 'top_x4.png'} <- {nested_folder / 'top.png'}",
    ]
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["deep_x4.png"]


def test_metadata_reaches_the_output(tmp_path: Path) -> None:
    """EXIF (orientation applied, then reset to 1), the ICC profile and PNG text survive osdsr upscale."""
    from PIL import ImageCms
    from PIL.PngImagePlugin import PngInfo

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    exif[0x010F] = "osdsr camera"  # Make
    text = PngInfo()
    text.add_text("Comment", "sunset over the bay")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb(10, 13)).save(src / "shot.jpg", exif=exif, icc_profile=icc, quality=95)
    Image.fromarray(_rgb(10, 13)).save(src / "scan.png", pnginfo=text, icc_profile=icc)
    out = tmp_path / "out"
    assert _upscale(src, "-o", out, "--format", "same") == 0
    with Image.open(out / "shot.jpg") as shot:
        assert shot.size == (40, 52) and shot.info["icc_profile"] == icc
        assert shot.getexif()[0x0112] == 1 and shot.getexif()[0x010F] == "osdsr camera"
    with Image.open(out / "scan.png") as scan:
        assert scan.text == {"Comment": "sunset over the bay"} and scan.info["icc_profile"] == icc


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("osdsr upscale:")]


def test_an_unwritable_output_folder_is_one_line_before_any_image_is_computed(
    good_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno
    import tempfile

    import osdsr.inference

    computed = []
    monkeypatch.setattr(osdsr.inference, "upscale_image_to_samples", lambda *a, **k: computed.append(a))

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system", str(kwargs.get("dir")) + "/.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert _upscale(good_folder, "-o", tmp_path / "out") == 2
    errors = _error_lines(capsys.readouterr().err)
    assert errors == [(f"osdsr upscale: error: {tmp_path / 'out'}: cannot write (read-only file system: choose an "
                       "output folder on a writable disk)")]
    assert computed == []


def test_a_model_giving_nan_fails_that_file_instead_of_writing_a_black_image(
    good_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import osdsr.model_loading

    original = osdsr.model_loading.load_sr_model

    def broken(name: str, options: object) -> object:
        model = original(name, options)
        decode = model.decode
        model.decode = lambda z: decode(z) * float("nan")
        return model

    monkeypatch.setattr(osdsr.model_loading, "load_sr_model", broken)
    out = tmp_path / "out"
    assert _upscale(good_folder / "odd.png", "-o", out) == 1
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1 and f"failed: {good_folder / 'odd.png'}: the model's output has NaN/inf" in errors[0]
    assert "0 written, 0 skipped, 1 failed" in err and not out.joinpath("odd.png").exists()


def test_a_full_disk_names_the_input_and_the_real_output(
    good_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    def full_disk(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "out"
    assert _upscale(good_folder, "-o", out) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert errors[0] == (f"osdsr upscale: failed: {good_folder / 'odd.png'}: {out / 'odd.png'}: cannot write "
                         "(no space left on device: free disk space or choose another output)")
    assert list(out.iterdir()) == []  # no temporary file left


def test_a_file_another_process_writes_meanwhile_is_kept_and_reported_skipped(
    good_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import osdsr.inference

    out = tmp_path / "out"
    original = osdsr.inference.upscale_image_to_samples

    def racing(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        (out / "odd.png").write_bytes(b"the other process's result")  # it finished first
        return result

    monkeypatch.setattr(osdsr.inference, "upscale_image_to_samples", racing)
    assert _upscale(good_folder / "odd.png", "-o", out) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "written meanwhile by another process" in captured.err
    assert "0 written, 1 skipped, 0 failed" in captured.out
    assert (out / "odd.png").read_bytes() == b"the other process's result"
    assert [p.name for p in out.iterdir()] == ["odd.png"]


def test_temporary_files_of_a_killed_upscale_are_removed_on_the_next(good_folder: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    orphan = out / f".photo.png.{dead.stdout.strip()}.x1y2z3.tmp"
    others = [out / ".photo.png.tmp", out / f".photo.png.{os.getpid()}.live00.tmp", out / "notes.tmp"]
    for path in (orphan, *others):
        path.write_bytes(b"partial")
    assert _upscale(good_folder, "-o", out) == 0
    assert not orphan.exists() and all(path.exists() for path in others)


def test_a_gif_in_a_folder_is_upscaled_and_its_extra_frames_are_named(
    good_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frames = [Image.fromarray(_rgb(8, 8, seed=s)).convert("P") for s in range(3)]
    frames[0].save(good_folder / "anim.gif", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert _upscale(good_folder, "-o", out, "--format", "same") == 0
    assert sorted(p.name for p in out.iterdir()) == ["anim.png", "odd.png", "photo.jpg"]
    assert [m for m in caplog.messages if "anim.gif" in m] == [
        (f"{good_folder / 'anim.gif'}: has 3 frames; only the first is used (split it into single images to process "
         "every frame)")
    ]


def test_dtype_auto_is_bf16_for_networks_on_cpus_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for capabilities, network_dtype in (({"avx512_bf16": True}, torch.bfloat16), ({"avx2": True}, torch.float32)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=capabilities: caps)
        assert upscale_command.check_dtype("auto", cpu, "default") is network_dtype
        assert upscale_command.check_dtype("auto", cpu, "bicubic") is torch.float32  # no network to speed up
        assert upscale_command.check_dtype("fp32", cpu, "default") is torch.float32


def test_an_image_too_large_for_the_memory_limit_fails_alone_and_the_batch_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_rgb(300, 400, seed=1)).save(folder / "large.png")
    Image.fromarray(_rgb(12, 10, seed=2)).save(folder / "small.png")
    out = tmp_path / "out"
    assert _upscale(folder, "-o", out, "--max-memory", "0.001") == 1
    err = capsys.readouterr().err
    failed = [line for line in _error_lines(err) if "failed:" in line]
    assert len(failed) == 1 and f"{folder / 'large.png'}: 400x300 needs about" in failed[0] and "--max-memory" in failed[0]
    assert "1 written, 0 skipped, 1 failed" in err and [p.name for p in out.iterdir()] == ["small.png"]
