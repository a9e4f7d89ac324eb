"""Names the command line offers as choices, importable without torch, numpy or Pillow.

``osdsr CMD --help`` imports only the standard library, ``osdsr.cli`` and light modules such as this
one, so it answers at once; the modules that implement each set (``osdsr.data.image_io``,
``osdsr.color_fix``, ``osdsr.metrics.registry``) take their names from here.
"""

from __future__ import annotations

# file suffix -> Pillow format name, for the formats this project reads (it writes those in FORMAT_SUFFIX)
IMAGE_FORMATS: dict[str, str] = {
    ".gif": "GIF",  # read only: its first frame (see osdsr.data.image_io.load_image)
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
FORMAT_SUFFIX: dict[str, str] = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}

COLOR_FIXES = ("wavelet", "adain", "none")  # osdsr.color_fix
DEFAULT_MEMORY_LIMIT_GIB = 2.0  # osdsr.inference: one image's result and working buffers (tile activations on top)

METRIC_NAMES = ("psnr", "ssim", "niqe", "lpips", "dists", "musiq", "maniqa", "clipiqa")  # osdsr.metrics.registry
