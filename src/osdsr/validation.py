"""Validation during training: upscale a few LR images of a paired folder, report PSNR/SSIM on Y."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from osdsr.models.sr_model import SRModel


def validate_folder(
    model: SRModel, lr_dir: Path, hr_dir: Path, out_dir: Path, max_images: int, save_images: int
) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y of ``model`` over the first ``max_images`` LR/HR pairs (matched by stem).

    The first ``save_images`` results are written to ``out_dir`` for a look.
    """
    from osdsr.data.image_io import load_image, save_image
    from osdsr.inference import upscale_image
    from osdsr.metrics.evaluation import match_folders
    from osdsr.metrics.fidelity import psnr, ssim

    pairs = match_folders(lr_dir, hr_dir).pairs[:max_images]
    if not pairs:
        raise ValueError(f"{lr_dir}: no LR image matches an HR image in {hr_dir}")
    scores: dict[str, list[float]] = {"val/psnr_y": [], "val/ssim_y": []}
    for i, pair in enumerate(pairs):
        sr = upscale_image(model, load_image(pair.pred), color_fix="none")
        hr = load_image(pair.gt).pixels
        pred = sr.pixels
        if pred.shape != hr.shape:
            raise ValueError(f"{pair.gt}: HR size {hr.shape[:2]} is not 4x its LR ({pred.shape[:2]} after SR)")
        pred8, hr8 = (np.round(a * 255).astype(np.uint8) for a in (pred, hr))
        scores["val/psnr_y"].append(psnr(pred8, hr8))
        scores["val/ssim_y"].append(ssim(pred8, hr8))
        if i < save_images:
            save_image(out_dir / f"{pair.name}.png", sr, overwrite=True)
    return {k: float(np.mean(v)) for k, v in scores.items()}
