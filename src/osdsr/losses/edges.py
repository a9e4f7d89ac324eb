"""Sobel edge magnitude, the edge map of the edge-aware perceptual losses (D3SR Eq. 6-7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# D3SR Eq. 6: horizontal (G_x) and vertical (G_y) Sobel kernels, rows top to bottom.
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))

# Added inside the square root of Eq. 7. Without it the gradient (G*x) / S(x) is 0/0 wherever both
# Sobel responses vanish (any flat region); with it the gradient is 0 there and |dS/d(G*x)| <= 1
# everywhere. It lifts the magnitude of a flat region from 0 to sqrt(1e-6) = 1e-3, and 1e-6 is
# still representable in float16 and bfloat16.
SOBEL_EPS = 1e-6


def sobel_magnitude(x: torch.Tensor, eps: float = SOBEL_EPS) -> torch.Tensor:
    """``S(x) = sqrt((G_x * x)^2 + (G_y * x)^2 + eps)`` per channel of ``x`` ``[B, C, H, W]`` (D3SR Eq. 7).

    The image is replicate-padded by one pixel so that its border is not seen as an edge; the output
    has the shape of ``x``. ``F.conv2d`` is a cross-correlation, which flips the sign of each response
    relative to a true convolution; the squared magnitude is the same.
    """
    if x.ndim != 4:
        raise ValueError(f"sobel_magnitude: expected a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    kernels = torch.tensor((SOBEL_X, SOBEL_Y), dtype=x.dtype, device=x.device)  # [2, 3, 3]
    weight = kernels.unsqueeze(1).repeat(channels, 1, 1, 1)  # [2C, 1, 3, 3]: (G_x, G_y) per channel
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    responses = F.conv2d(padded, weight, groups=channels)  # [B, 2C, H, W]: channel c -> 2c (x), 2c+1 (y)
    g_x, g_y = responses[:, 0::2], responses[:, 1::2]
    return (g_x * g_x + g_y * g_y + eps).sqrt()  # D3SR Eq. 7
