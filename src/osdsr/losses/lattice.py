"""Lattice loss: the error pattern that repeats with the latent grid's period.

A pixel-unshuffle autoencoder decodes each latent token into its own ``f x f`` pixel block, so a
generator that is slightly wrong in the same way for every token draws a faint grid with period ``f``
over flat areas. Plain MSE weighs that pattern like any other error of the same energy and leaves it
behind; this term weighs it on its own. It is the project's addition, not a paper's formula.

For the error ``e = pred - target`` cut into the ``f x f`` blocks of the grid:
    P(e) = e_block - mean(e_block)                     (what varies inside a block)
    L    = mean( avgpool_k(P(e))^2 )                   (averaged over k x k neighbouring blocks)
Texture errors change from block to block and average out over the window; a grid does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lattice_loss(pred: torch.Tensor, target: torch.Tensor, period: int, window: int = 8) -> torch.Tensor:
    """Mean square of the period-``period`` error pattern, averaged over ``window`` x ``window`` blocks.

    ``pred`` and ``target`` are ``[B, C, H, W]`` images with ``H`` and ``W`` multiples of ``period``.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"lattice_loss: expected two [B, C, H, W] tensors of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    batch, channels, height, width = pred.shape
    if height % period or width % period:
        raise ValueError(f"lattice_loss: image size {height}x{width} is not a multiple of the period {period}")
    blocks = F.pixel_unshuffle(pred - target, period)  # [B, C*p*p, H/p, W/p]: channel c*p*p + phase
    blocks = blocks.view(batch, channels, period * period, height // period, width // period)
    pattern = blocks - blocks.mean(dim=2, keepdim=True)
    pattern = pattern.flatten(1, 2)
    window = min(window, height // period, width // period)
    local = F.avg_pool2d(pattern, window, stride=window)
    return local.pow(2).mean()
