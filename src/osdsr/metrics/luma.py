"""The luma (Y) channel that SR papers evaluate on, computed the way BasicSR and MATLAB do.

Y is ITU-R BT.601 "studio swing" luma, MATLAB's ``rgb2ycbcr`` Y: ``16 + 65.481 R + 128.553 G + 24.966 B``
with R, G, B in [0, 1], so Y lies in [16, 235]. It is returned in float64, unrounded.

Grayscale (HxW or HxWx1) is treated as an RGB image with R = G = B, so its Y is ``16 + 219 * gray``: a gray
photo gives the same metrics whether it was stored as L or as RGB. (BasicSR instead takes a one-channel image
as Y unchanged, on [0, 255]; the two agree on every RGB image, which is what the papers report.)
"""

from __future__ import annotations

import numpy as np

# MATLAB rgb2ycbcr / ITU-R BT.601: Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B in [0, 1]).
Y_FROM_RGB = np.array([65.481, 128.553, 24.966])
Y_OFFSET = 16.0


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """``image`` (uint8, uint16, or float in [0, 1]) as float64 in [0, 1]; other dtypes or ranges raise."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float64) / 65535.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"images must be uint8, uint16 or float in [0, 1], got dtype {image.dtype}")
    unit = image.astype(np.float64)
    if unit.size and (unit.min() < 0.0 or unit.max() > 1.0):
        raise ValueError(
            f"float images must lie in [0, 1], got values in [{unit.min():.4g}, {unit.max():.4g}]; "
            "clip or rescale first"
        )
    return unit


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Y in [16, 235] (float64, HxW) of an HxWx3 RGB or HxW / HxWx1 gray image (see the module docstring)."""
    unit = to_unit_range(image)
    if unit.ndim == 3 and unit.shape[2] == 1:
        unit = unit[:, :, 0]
    if unit.ndim == 2:
        return Y_OFFSET + Y_FROM_RGB.sum() * unit
    if unit.ndim == 3 and unit.shape[2] == 3:
        return Y_OFFSET + unit @ Y_FROM_RGB
    raise ValueError(f"expected an HxWx3 RGB or HxW / HxWx1 gray image, got shape {tuple(image.shape)}")


def crop_border(plane: np.ndarray, border: int) -> np.ndarray:
    """``plane`` without ``border`` pixels on each side (BasicSR's ``crop_border``, usually the SR scale)."""
    if border < 0:
        raise ValueError(f"crop border must be >= 0, got {border}")
    if border == 0:
        return plane
    if min(plane.shape[:2]) <= 2 * border:
        raise ValueError(f"image of size {plane.shape[1]}x{plane.shape[0]} is too small for a crop border of {border}")
    return plane[border:-border, border:-border]
