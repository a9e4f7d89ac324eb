"""MATLAB ``imresize`` (bicubic, optional antialiasing) in numpy, as NIQE and MATLAB-made SR test sets use it.

MATLAB resizes each axis with a weight matrix: output pixel ``k`` (1-based) sits at input coordinate
``u = k / scale + 0.5 (1 - 1 / scale)`` and takes the Keys cubic kernel (a = -0.5) around it. When shrinking
with antialiasing the kernel is stretched by ``1 / scale`` (and scaled by ``scale``), so it also low-passes.
Taps falling outside the image are mirrored (``1, 2, ... n, n, n-1, ...``) and each row of weights sums to 1.
Here each axis becomes one dense (out x in) matrix, applied as a matrix product in float64.
"""

from __future__ import annotations

import math

import numpy as np

CUBIC_SUPPORT = 4.0  # width of the Keys cubic kernel, in input pixels


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool) -> np.ndarray:
    """The (out_length x in_length) matrix that resizes one axis like MATLAB ``imresize(..., 'bicubic')``."""
    shrink_aa = antialiasing and scale < 1
    kernel_width = CUBIC_SUPPORT / scale if shrink_aa else CUBIC_SUPPORT
    position = np.arange(1, out_length + 1, dtype=np.float64)
    center = position / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(center - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    distance = center[:, None] - indices
    weights = scale * _cubic(scale * distance) if shrink_aa else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    columns = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), columns.reshape(-1)), weights.reshape(-1))
    return matrix


def imresize(image: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Bicubic resize of an HxW or HxWxC float array by ``scale`` (output ``ceil(H * scale) x ceil(W * scale)``)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC array, got shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    rows = resize_matrix(height, math.ceil(height * scale), scale, antialiasing)
    cols = resize_matrix(width, math.ceil(width * scale), scale, antialiasing)
    data = np.asarray(image, dtype=np.float64)
    resized = np.tensordot(rows, data, axes=(1, 0))  # (out_h, W[, C])
    resized = np.tensordot(cols, resized, axes=(1, 1))  # (out_w, out_h[, C])
    return np.swapaxes(resized, 0, 1)
