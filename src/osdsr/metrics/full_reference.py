"""Weight-free full-reference perceptual metrics: MS-SSIM, GMSD and HaarPSI.

They need no network weights (unlike LPIPS/DISTS) and, unlike NIQE, cannot be fooled by texture that
is not in the ground truth. The conventions are those of the metrics' published definitions as the
``piq`` library implements them (its defaults, ``data_range`` 1), so the values compare with papers
that report piq's: RGB in [0, 1], computed in float64, the whole image (no border crop).

- MS-SSIM (Wang et al. 2003): SSIM's contrast-structure term on 5 dyadic scales and the full SSIM on
  the coarsest, on every RGB channel, 11x11 Gaussian window (sigma 1.5, valid positions only),
  K1 = 0.01, K2 = 0.03; between scales a 2x2 average (odd sizes first padded by replication at the
  top-left); Eq. 7 with the paper's exponents; averaged over channels. Needs sides >= 161 pixels.
- GMSD (Xue et al. 2014): on the luma Y of YIQ, 2x2-averaged once (odd sizes zero-padded at the
  bottom-right), Prewitt gradients (divided by 3, zero padding); the standard deviation of the
  gradient-magnitude similarity map (Eq. 4-8, c = 170 / 255^2). Lower is better; 0 for equal images.
- HaarPSI (Reisenhofer et al. 2018): on YIQ scaled to [0, 255], 2x2-averaged once; Haar wavelet
  responses of Y on 3 scales (horizontal and vertical), local similarities of the two finest scales,
  weighted by the coarsest scale's magnitude; I and Q compared after a 2x2 mean; logistic pooling
  with alpha = 4.2 and c = 30 (Eq. 10-12). 1 for equal images.
Gray images (one channel) skip the colour conversion, as in piq.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from osdsr.metrics.luma import to_unit_range

# YIQ (NTSC) from RGB, rows Y, I, Q
YIQ_FROM_RGB = ((0.299, 0.587, 0.114), (0.5959, -0.2746, -0.3213), (0.2115, -0.5227, 0.3112))

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, exponents per scale
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

GMSD_C = 170 / 255.0**2  # Xue et al. 2014: T = 170 on the [0, 255] scale
PREWITT_X = ((-1.0, 0.0, 1.0), (-1.0, 0.0, 1.0), (-1.0, 0.0, 1.0))  # divided by 3 below

HAARPSI_SCALES = 3
HAARPSI_C = 30.0  # Reisenhofer et al. 2018: C for images on [0, 255]
HAARPSI_ALPHA = 4.2


def _as_batch(image: np.ndarray) -> torch.Tensor:
    """HxWxC (or HxW) in [0, 1] -> float64 tensor [1, C, H, W]."""
    unit = to_unit_range(image)
    if unit.ndim == 2:
        unit = unit[:, :, None]
    if unit.ndim != 3 or unit.shape[2] not in (1, 3):
        raise ValueError(f"expected an HxWx3 RGB or HxW / HxWx1 gray image, got shape {tuple(image.shape)}")
    return torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))[None]


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    return _as_batch(pred), _as_batch(gt)


def _yiq(x: torch.Tensor) -> torch.Tensor:
    matrix = torch.tensor(YIQ_FROM_RGB, dtype=x.dtype)
    return torch.einsum("kc,bchw->bkhw", matrix, x)


def _halve(x: torch.Tensor) -> torch.Tensor:
    """2x2 average after zero-padding odd sides at the bottom-right (both sides, if either is odd)."""
    pad = max(x.shape[2] % 2, x.shape[3] % 2)
    return F.avg_pool2d(F.pad(x, [0, pad, 0, pad]), kernel_size=2)


def _similarity(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    return (2 * a * b + c) / (a**2 + b**2 + c)


def _gaussian_window(channels: int) -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * SSIM_SIGMA**2))
    return (g / g.sum()).expand(channels, 1, -1, -1)


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel means of the SSIM map and of its contrast-structure term (valid positions)."""
    groups = x.shape[1]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=groups)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim_map.mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def ms_ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Multi-scale SSIM in [0, 1] (1: equal), mean over the channels (see the module docstring)."""
    x, y = _pair(pred, gt)
    smallest = (SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1
    if min(x.shape[2:]) < smallest:
        raise ValueError(f"MS-SSIM needs at least {smallest}x{smallest} pixels, got {x.shape[3]}x{x.shape[2]}")
    window = _gaussian_window(x.shape[1])
    terms = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        if level > 0:
            pad = max(x.shape[2] % 2, x.shape[3] % 2)
            x, y = (F.avg_pool2d(F.pad(t, [pad, 0, pad, 0], mode="replicate"), kernel_size=2) for t in (x, y))
        ssim_mean, cs_mean = _ssim_terms(x, y, window)
        terms.append(ssim_mean if level == len(MS_SSIM_WEIGHTS) - 1 else cs_mean)
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64).view(-1, 1, 1)
    per_channel = torch.prod(torch.relu(torch.stack(terms)) ** weights, dim=0)  # Wang et al. 2003, Eq. 7
    return float(per_channel.mean())


def gmsd(pred: np.ndarray, gt: np.ndarray) -> float:
    """Gradient magnitude similarity deviation (0: equal; lower is better)."""
    x, y = _pair(pred, gt)
    if x.shape[1] == 3:
        x, y = _yiq(x)[:, :1], _yiq(y)[:, :1]
    x, y = _halve(x), _halve(y)
    prewitt = torch.tensor(PREWITT_X, dtype=torch.float64) / 3
    kernels = torch.stack([prewitt, prewitt.T])[:, None]

    def magnitude(t: torch.Tensor) -> torch.Tensor:  # Xue et al. 2014, Eq. 3
        return F.conv2d(t, kernels, padding=1).pow(2).sum(dim=1).sqrt()

    gms = _similarity(magnitude(x), magnitude(y), GMSD_C)  # Eq. 4
    return float(gms.std(unbiased=False))  # Eq. 8


def _haar_kernels(size: int) -> torch.Tensor:
    """The 2-D Haar filters of side ``size``: [+1 top half, -1 bottom half] / size, and its transpose."""
    kernel = torch.ones(size, size, dtype=torch.float64) / size
    kernel[size // 2 :] *= -1
    return torch.stack([kernel, kernel.T])[:, None]


def haarpsi(pred: np.ndarray, gt: np.ndarray) -> float:
    """Haar wavelet-based perceptual similarity in (0, 1] (1: equal)."""
    x, y = _pair(pred, gt)
    coarsest = 2**HAARPSI_SCALES
    if min(x.shape[2:]) < 2 * coarsest:
        raise ValueError(f"HaarPSI needs at least {2 * coarsest}x{2 * coarsest} pixels, got {x.shape[3]}x{x.shape[2]}")
    colour = x.shape[1] == 3
    x, y = (_yiq(t * 255) if colour else t * 255 for t in (x, y))
    x, y = _halve(x), _halve(y)

    def responses(t: torch.Tensor) -> torch.Tensor:  # [B, 2 * scales, H, W]: (horizontal, vertical) per scale
        out = []
        for scale in range(1, HAARPSI_SCALES + 1):
            size = 2**scale
            padded = F.pad(t[:, :1], [size // 2 - 1, size // 2, size // 2 - 1, size // 2])
            out.append(F.conv2d(padded, _haar_kernels(size)))
        return torch.cat(out, dim=1)

    coeff_x, coeff_y = responses(x), responses(y)
    last = 2 * (HAARPSI_SCALES - 1)
    weights = torch.maximum(coeff_x[:, last:].abs(), coeff_y[:, last:].abs())  # Eq. 11
    similarities = [
        _similarity(coeff_x[:, (o, o + 2)].abs(), coeff_y[:, (o, o + 2)].abs(), HAARPSI_C).mean(dim=1, keepdim=True)
        for o in range(2)
    ]  # Eq. 10, the two finest scales
    if colour:
        chroma_x, chroma_y = (F.avg_pool2d(F.pad(t[:, 1:], [0, 1, 0, 1]), 2, stride=1).abs() for t in (x, y))
        weights = torch.cat([weights, weights.mean(dim=1, keepdim=True)], dim=1)
        similarities.append(_similarity(chroma_x, chroma_y, HAARPSI_C).mean(dim=1, keepdim=True))
    similarity = torch.cat(similarities, dim=1)
    eps = torch.finfo(torch.float64).eps
    pooled = ((torch.sigmoid(HAARPSI_ALPHA * similarity) * weights).sum() + eps) / (weights.sum() + eps)  # Eq. 12
    return float((torch.logit(pooled) / HAARPSI_ALPHA) ** 2)
