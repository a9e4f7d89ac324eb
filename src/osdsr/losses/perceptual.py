"""Perceptual losses on RGB images ``[B, 3, H, W]`` in ``[0, 1]``: MSE, LPIPS, DISTS, EA-LPIPS, EA-DISTS.

Every loss is a module called as ``loss(pred, target) -> scalar`` (mean over the batch). LPIPS and DISTS
run the project's VGG16 (``osdsr.models.vgg``) with ImageNet weights from a user-given file plus
their own small learned weights (LPIPS linear heads, DISTS alpha/beta), both loaded from local paths
through :func:`build_perceptual_loss`. The networks are frozen; gradients flow to the inputs only.
The edge-aware forms add the same loss on Sobel edge maps (D3SR Eq. 5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from osdsr.losses.edges import sobel_magnitude
from osdsr.models.vgg import VGG16, check_state_dict, load_vgg16, read_state_dict, stage_features

logger = logging.getLogger(__name__)

# LPIPS v0.1 input scaling (Zhang et al. 2018, reference ScalingLayer): images mapped to [-1, 1], then
# (x - shift) / scale, which is ImageNet mean/std normalisation expressed on [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_NORM_EPS = 1e-10  # added to the channel norm when features are unit-normalised
LPIPS_HEAD_KEY = "lin{}.model.1.weight"  # official LPIPS weight files (lpips/weights/v0.1/vgg.pth)

# DISTS (Ding et al. 2020) input normalisation (torchvision ImageNet mean/std) and stabilising constants.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DISTS_C1 = 1e-6  # texture (mean) similarity
DISTS_C2 = 1e-6  # structure (covariance) similarity

PerceptualLossName = Literal["mse", "lpips", "ea-lpips", "dists", "ea-dists"]

_VGG_WEIGHTS_HELP = (
    "ImageNet VGG16 weights: pass vgg_weights=PATH (a torchvision vgg16 state dict, .pth or .safetensors)"
)


def _check_images(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"{name}: expected pred and target of the same shape [B, 3, H, W], "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _channel_constant(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


class FrozenVGGLoss(nn.Module):
    """Base of LPIPS and DISTS: holds a frozen ``VGG16().features`` and averages a per-image distance.

    The module stays in eval mode (``train()`` is a no-op) and none of its parameters require grad.
    """

    HEAD_WEIGHTS_HELP: str  # what head-weight file the loss needs and how to pass it

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features

    def freeze(self) -> None:
        """Turn off gradients of every parameter and enter eval mode; call at the end of ``__init__``."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenVGGLoss:
        """Stay in eval mode: the loss network is frozen whatever mode its parent is put in."""
        return super().train(False)

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image distance ``[B]``."""
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_images(pred, target, type(self).__name__)
        return self.distance(pred, target).mean()


def _unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Divide each spatial feature vector by its L2 norm across channels (LPIPS)."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + LPIPS_NORM_EPS)


class LPIPS(FrozenVGGLoss):
    """LPIPS, VGG variant (Zhang et al. 2018, Eq. 1).

    ``d(x, y) = sum_l mean_hw( w_l . (f_l(x) - f_l(y))^2 )`` over the five VGG stages ``l``, with
    ``f_l`` unit-normalised across channels and ``w_l`` the non-negative 1x1 linear head of stage ``l``.
    """

    HEAD_WEIGHTS_HELP = (
        "the LPIPS linear heads: pass head_weights=PATH "
        "(the official LPIPS v0.1 vgg.pth, keys lin0.model.1.weight ... lin4.model.1.weight)"
    )

    def __init__(self, features: nn.Sequential, head_weights: Sequence[torch.Tensor]) -> None:
        super().__init__(features)
        self.heads = nn.ModuleList()
        for weight in head_weights:
            head = nn.Conv2d(weight.shape[1], 1, 1, bias=False)
            head.weight.data.copy_(weight)
            self.heads.append(head)
        self.register_buffer("shift", _channel_constant(LPIPS_SHIFT), persistent=False)
        self.register_buffer("scale", _channel_constant(LPIPS_SCALE), persistent=False)
        self.freeze()

    @classmethod
    def from_head_file(cls, features: nn.Sequential, path: str | Path | None) -> LPIPS:
        """LPIPS with heads from an official LPIPS weight file, or all-ones heads when ``path`` is None.

        All-ones heads sum the squared feature differences over channels: LPIPS's uncalibrated baseline.
        """
        channels = _stage_channels(features)
        if path is None:
            return cls(features, [torch.ones(1, c, 1, 1) for c in channels])
        return cls(features, load_lpips_heads(path, channels))

    def _scaled(self, image: torch.Tensor) -> torch.Tensor:
        return (2.0 * image - 1.0 - self.shift) / self.scale

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats_pred = stage_features(self.features, self._scaled(pred), pooling="max")
        feats_target = stage_features(self.features, self._scaled(target), pooling="max")
        total = pred.new_zeros(pred.shape[0])
        for head, f_pred, f_target in zip(self.heads, feats_pred, feats_target):
            squared_diff = (_unit_normalise(f_pred) - _unit_normalise(f_target)).square()
            total = total + head(squared_diff).mean(dim=(1, 2, 3))  # LPIPS Eq. 1
        return total


class DISTS(FrozenVGGLoss):
    """DISTS (Ding et al. 2020): texture and structure similarity of L2-pooled VGG16 features.

    Stage 0 is the input image itself, stages 1-5 the VGG stages. Per channel ``i`` of each stage,
    texture ``l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)`` and structure
    ``s = (2 cov_xy + c2) / (var_x + var_y + c2)`` (spatial statistics); the distance is
    ``1 - sum_i (alpha_i l_i + beta_i s_i) / (sum alpha + sum beta)``.
    """

    HEAD_WEIGHTS_HELP = (
        "the DISTS alpha/beta weights: pass head_weights=PATH "
        "(the official DISTS weights.pt, keys 'alpha' and 'beta' of shape [1, 1475, 1, 1])"
    )

    def __init__(self, features: nn.Sequential, alpha: torch.Tensor, beta: torch.Tensor) -> None:
        super().__init__(features)
        self.register_buffer("alpha", alpha.detach().clone().float())
        self.register_buffer("beta", beta.detach().clone().float())
        self.register_buffer("mean", _channel_constant(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", _channel_constant(IMAGENET_STD), persistent=False)
        self.stage_channels = _dists_channels(features)
        self.freeze()

    @classmethod
    def from_head_file(cls, features: nn.Sequential, path: str | Path | None) -> DISTS:
        """DISTS with alpha/beta from an official DISTS weight file, or all equal when ``path`` is None."""
        channels = _dists_channels(features)
        if path is None:
            equal = torch.ones(1, sum(channels), 1, 1)
            return cls(features, equal, equal)
        return cls(features, *load_dists_weights(path, channels))

    def _stages(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [image, *stage_features(self.features, (image - self.mean) / self.std, pooling="l2")]

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / weight_sum, self.stage_channels, dim=1)
        betas = torch.split(self.beta / weight_sum, self.stage_channels, dim=1)
        similarity = pred.new_zeros(pred.shape[0])
        for x, y, alpha, beta in zip(self._stages(pred), self._stages(target), alphas, betas):
            mu_x = x.mean(dim=(2, 3), keepdim=True)
            mu_y = y.mean(dim=(2, 3), keepdim=True)
            texture = (2 * mu_x * mu_y + DISTS_C1) / (mu_x.square() + mu_y.square() + DISTS_C1)
            x_centred, y_centred = x - mu_x, y - mu_y
            var_x = x_centred.square().mean(dim=(2, 3), keepdim=True)
            var_y = y_centred.square().mean(dim=(2, 3), keepdim=True)
            # covariance from centred features: equal to E[xy] - mu_x mu_y, without its cancellation error
            cov_xy = (x_centred * y_centred).mean(dim=(2, 3), keepdim=True)
            structure = (2 * cov_xy + DISTS_C2) / (var_x + var_y + DISTS_C2)
            similarity = similarity + (alpha * texture + beta * structure).sum(dim=(1, 2, 3))
        return 1 - similarity


class EdgeAwareLoss(nn.Module):
    """``EA-X(x, y) = X(x, y) + X(S(x), S(y))`` with ``S`` the Sobel magnitude (D3SR Eq. 5).

    The Sobel maps (values up to 4 * sqrt(2)) are fed to ``X`` as they are, as in Eq. 5.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        edge_term = self.base(sobel_magnitude(pred), sobel_magnitude(target))
        return self.base(pred, target) + edge_term  # D3SR Eq. 5


def _stage_channels(features: nn.Sequential) -> list[int]:
    """Output channels of the five VGG stages of ``features`` (the conv before each pooling layer)."""
    channels, last = [], 0
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            last = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            channels.append(last)
    return channels


def _dists_channels(features: nn.Sequential) -> list[int]:
    return [3, *_stage_channels(features)]  # stage 0 is the RGB input


def load_lpips_heads(path: str | Path, channels: Sequence[int]) -> list[torch.Tensor]:
    """The five LPIPS head weights ``[1, C_l, 1, 1]`` from an official LPIPS weight file.

    The file holds exactly ``lin0.model.1.weight`` ... ``lin4.model.1.weight`` (the reference heads are
    ``Sequential(Dropout, Conv2d)``, hence ``model.1``).
    """
    state = read_state_dict(path, "LPIPS head weights")
    expected = {LPIPS_HEAD_KEY.format(k): torch.empty(1, c, 1, 1) for k, c in enumerate(channels)}
    check_state_dict(expected, state, str(path), "Expected the official LPIPS v0.1 VGG file (vgg.pth).")
    return [state[key].float() for key in expected]


def load_dists_weights(path: str | Path, channels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """DISTS ``alpha`` and ``beta`` ``[1, sum(channels), 1, 1]`` from an official DISTS weight file."""
    state = read_state_dict(path, "DISTS alpha/beta weights")
    shape = torch.empty(1, sum(channels), 1, 1)
    hint = "Expected the official DISTS weights.pt."
    check_state_dict({"alpha": shape, "beta": shape}, state, str(path), hint)
    return state["alpha"].float(), state["beta"].float()


# name -> (network, edge-aware); network None is plain MSE.
PERCEPTUAL_LOSSES: dict[str, tuple[type[LPIPS] | type[DISTS] | None, bool]] = {
    "mse": (None, False),
    "lpips": (LPIPS, False),
    "ea-lpips": (LPIPS, True),
    "dists": (DISTS, False),
    "ea-dists": (DISTS, True),
}


@dataclass(frozen=True)
class PerceptualLossConfig:
    """The perceptual term of a method's spatial loss: ``weight`` is lambda2 of D3SR Eq. 8.

    ``vgg_weights``: a torchvision vgg16 state dict; ``head_weights``: the LPIPS heads or DISTS
    alpha/beta file. ``allow_random`` (tests only) runs with random VGG / default head weights
    instead of refusing; ``vgg_width_divisor`` > 1 builds a tiny VGG (tests only).
    """

    name: PerceptualLossName = "ea-dists"
    weight: float = 1.0
    vgg_weights: str | None = None
    head_weights: str | None = None
    allow_random: bool = False
    vgg_width_divisor: int = 1


def build_perceptual_loss(
    name: str,
    *,
    vgg_weights: str | Path | None = None,
    head_weights: str | Path | None = None,
    allow_random: bool = False,
    vgg_width_divisor: int = 1,
) -> nn.Module:
    """The perceptual loss ``name`` (a key of ``PERCEPTUAL_LOSSES``) with its weights loaded.

    LPIPS and DISTS (and their EA forms) need both weight files; without them this raises one
    ValueError naming the missing files, unless ``allow_random`` (tests only), which logs a warning
    and uses a randomly initialised VGG16 and default head weights for whatever is missing.
    ``mse`` needs no weights; weight paths given to it are ignored.
    """
    if name not in PERCEPTUAL_LOSSES:
        raise ValueError(f"unknown perceptual loss {name!r}; choose one of {sorted(PERCEPTUAL_LOSSES)}")
    network, edge_aware = PERCEPTUAL_LOSSES[name]
    if network is None:
        loss: nn.Module = nn.MSELoss()
    else:
        needed = ((vgg_weights, _VGG_WEIGHTS_HELP), (head_weights, network.HEAD_WEIGHTS_HELP))
        missing = [help_ for path, help_ in needed if path is None]
        if missing and not allow_random:
            raise ValueError(f"perceptual loss {name!r} needs {'; and '.join(missing)}")
        if missing:
            logger.warning(
                "perceptual loss %r: allow_random=True, using RANDOM VGG16 / default head weights "
                "in place of %s (tests only)",
                name,
                "; and ".join(missing),
            )
        if vgg_weights is None:
            vgg = VGG16(vgg_width_divisor)
        else:
            vgg = load_vgg16(vgg_weights, width_divisor=vgg_width_divisor)
        loss = network.from_head_file(vgg.features, head_weights)
    return EdgeAwareLoss(loss) if edge_aware else loss


def perceptual_loss_from_config(config: PerceptualLossConfig) -> nn.Module:
    """:func:`build_perceptual_loss` for a :class:`PerceptualLossConfig` (its ``weight`` is the caller's)."""
    return build_perceptual_loss(
        config.name,
        vgg_weights=config.vgg_weights,
        head_weights=config.head_weights,
        allow_random=config.allow_random,
        vgg_width_divisor=config.vgg_width_divisor,
    )
