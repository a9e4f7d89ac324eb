"""The local web page of ``osdsr ui``: drop images, pick a model and settings, compare, download.

``build_app`` returns a gradio ``Blocks``. Every image goes through ``osdsr.commands.upscale.upscale_file``,
the function ``osdsr upscale`` runs, so a page result and a command-line result with the same settings
are the same file. Results are written into one output folder, the only folder the page serves
besides gradio's own upload cache. A file that cannot be read is one message in the page while the
other files go on; the job is a generator, so "Stop" ends it after the image being upscaled.

The page's upscale function is also the named API endpoint ``/upscale`` (one image file and the
settings in, the x4 PNG out) for ``gradio_client`` scripts.
"""

from __future__ import annotations

import dataclasses
import secrets
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageOps

from osdsr.choices import COLOR_FIXES
from osdsr.commands.upscale import DEFAULT_TILE, UpscaleSettings, upscale_file
from osdsr.model_loading import DEFAULT_MODEL
from osdsr.models.classical import CLASSICAL_INTERPOLATIONS
from osdsr.models.sr_model import SRModel, at_strength

MAX_TILE = 2048  # LR pixels: the largest tile the slider offers
TILE_STEP = 32
STRENGTH_STEP = 0.05


@dataclass(frozen=True)
class PageResult:
    """One upscaled file: its name, the uploaded input and the written PNG (paths: gradio state is hashed)."""

    name: str
    source: str
    after: str


def model_choices(extra: Sequence[str]) -> list[tuple[str, str]]:
    """(label, name or path) of every model the page offers: default, the classical ones, then ``extra``."""
    choices = [(DEFAULT_MODEL, DEFAULT_MODEL)] + [(name, name) for name in CLASSICAL_INTERPOLATIONS]
    for item in extra:
        label = Path(item).name or str(item)
        choices.append((label, str(item)))
    return choices


def _display_copy(path: Path) -> np.ndarray:
    """The input as the browser should show it: upright, 8-bit RGB(A) (TIFF and 16-bit do not display)."""
    with Image.open(path) as img:
        upright = ImageOps.exif_transpose(img)
        return np.asarray(upright.convert("RGBA" if "A" in upright.getbands() else "RGB"))


def _unique_target(out_dir: Path, source: Path) -> Path:
    """``out_dir/<stem>_x4.png``, numbered when an earlier job already wrote that name."""
    target = out_dir / f"{source.stem}_x4.png"
    number = 1
    while target.exists():
        number += 1
        target = out_dir / f"{source.stem}_x4_{number}.png"
    return target


def build_app(
    load_model: Callable[[str], SRModel],
    output_dir: Path,
    models: Sequence[str] = (),
    settings: UpscaleSettings = UpscaleSettings(),
) -> gr.Blocks:
    """The page. ``load_model(name)`` is called once per model name (its result kept); ``settings``
    gives the defaults of the page's controls and the device, dtype, seed and overlap of every run. The
    strength slider starts at the default model's own strength (it is loaded now) and moves only models
    that have a strength control."""
    output_dir.mkdir(parents=True, exist_ok=True)
    loaded: dict[str, SRModel] = {}

    def model_for(name: str) -> SRModel:
        if name not in loaded:
            try:
                loaded[name] = load_model(name)
            except (ValueError, OSError) as exc:
                raise gr.Error(f"model {name}: {exc}") from None
        return loaded[name]

    def run_settings(tile: float, color_fix: str) -> UpscaleSettings:
        if tile is None or tile < 0 or int(tile) != tile:
            raise gr.Error(f"tile size must be a whole number of LR pixels, 0 or more (got {tile})")
        if tile and tile <= settings.tile_overlap:
            raise gr.Error(f"tile size must be 0 or larger than the overlap of {settings.tile_overlap} pixels")
        return dataclasses.replace(settings, tile=int(tile), color_fix=color_fix)

    def model_at(name: str, strength: float | None) -> SRModel:
        try:
            return at_strength(model_for(name), strength)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    def upscale_one(path: str, model_name: str, tile: float, color_fix: str, strength: float | None = None) -> str:
        """API ``/upscale``: one image file -> the path of its x4 PNG (``strength``: None, the model's own)."""
        if not path:
            raise gr.Error("no image given")
        source, job, model = Path(path), run_settings(tile, color_fix), model_at(model_name, strength)
        try:
            return str(upscale_file(model, source, _unique_target(output_dir, source), job))
        except (ValueError, OSError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from None

    def upscale_many(
        paths: list[str] | None, model_name: str, tile: float, color_fix: str, strength: float, progress=gr.Progress()
    ) -> Iterator[tuple[list[PageResult], str, str | None]]:
        """The page's job: every dropped file in turn; yields (results, messages, downloads) after each."""
        if not paths:
            raise gr.Error("drop or pick one or more images first")
        job = run_settings(tile, color_fix)
        progress(0.0, desc="loading the model")
        model = model_at(model_name, strength)
        results: list[PageResult] = []
        messages: list[str] = []
        archive = output_dir / f"osdsr_results_{secrets.token_hex(4)}.zip"
        for index, path in enumerate(paths):
            source = Path(path)

            def tile_progress(done: int, total: int, index: int = index) -> None:
                progress((index + done / total) / len(paths), desc=f"image {index + 1}/{len(paths)}: tile {done}/{total}")

            try:
                target = upscale_file(model, source, _unique_target(output_dir, source), job, progress=tile_progress)
                results.append(PageResult(source.name, str(source), str(target)))
            except (ValueError, OSError, RuntimeError) as exc:
                reason = str(exc).removeprefix(f"{source}: ")  # the page names the file by its own name
                messages.append(f"**{source.name}** failed: {reason}")
            yield results, _status(results, messages, len(paths)), _downloads(results, archive)

    default_strength = getattr(model_for(DEFAULT_MODEL), "strength", None)
    with gr.Blocks(title="osdsr: x4 super-resolution") as app:
        gr.Markdown("# osdsr: x4 super-resolution\nDrop images, choose the model and settings, press **Upscale**.")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="images", file_count="multiple", file_types=["image"], elem_id="inputs")
                model = gr.Dropdown(model_choices(models), value=DEFAULT_MODEL, label="model", elem_id="model")
                tile = gr.Slider(0, MAX_TILE, value=settings.tile, step=TILE_STEP, label="tile size (LR pixels, 0: whole image)")
                color_fix = gr.Radio(list(COLOR_FIXES), value=settings.color_fix, label="colour fix")
                strength = gr.Slider(
                    0, 1, value=0.0 if default_strength is None else default_strength, step=STRENGTH_STEP,
                    label="strength (0: faithful, 1: most detail; models with a strength control)", elem_id="strength",
                )
                with gr.Row():
                    start = gr.Button("Upscale", variant="primary", elem_id="start")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                downloads = gr.File(label="download", interactive=False, elem_id="downloads")
                results = gr.State([])

                @gr.render(inputs=results)
                def show(page_results: list[PageResult]) -> None:
                    for result in page_results:
                        gr.ImageSlider(
                            (_display_copy(Path(result.source)), result.after), label=f"{result.name}: before / after x4",
                            format="png", type="filepath", interactive=False, elem_classes=["result"],
                        )

        job = start.click(
            upscale_many, [files, model, tile, color_fix, strength], [results, status, downloads], api_name=False
        )
        stop.click(None, cancels=[job])
        api_in = gr.File(visible=False)
        api_out = gr.File(visible=False)
        api_in.upload(upscale_one, [api_in, model, tile, color_fix, strength], api_out, api_name="upscale")
    return app


def _status(results: list[PageResult], messages: list[str], total: int) -> str:
    done = len(results) + len(messages)
    head = f"{len(results)} of {total} upscaled" + ("" if done == total else f", working on {done + 1}") + "."
    return "\n\n".join([head, *messages])


def _downloads(results: list[PageResult], archive: Path) -> str | None:
    """One PNG as is; several in the job's zip ``archive`` (rewritten after each image)."""
    if len(results) <= 1:
        return results[0].after if results else None
    with zipfile.ZipFile(archive, "w") as bundle:
        for result in results:
            bundle.write(result.after, Path(result.after).name)
    return str(archive)


def launch(app: gr.Blocks, output_dir: Path, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Serve ``app`` (queued, so jobs can be cancelled) on ``host:port``; files: only ``output_dir`` and
    gradio's upload cache. Returns the page's URL (at once when ``block`` is false)."""
    _, url, _ = app.queue().launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(output_dir)],
        ssr_mode=False,
        show_error=True,
        quiet=True,
        prevent_thread_lock=not block,
    )
    return url
