"""Perceptual losses: MSE, LPIPS, DISTS and their edge-aware forms (D3SR Eq. 5), on a tiny VGG16."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from osdsr.config import from_dict
from osdsr.losses.edges import sobel_magnitude
from osdsr.losses.perceptual import (
    DISTS,
    LPIPS,
    PERCEPTUAL_LOSSES,
    EdgeAwareLoss,
    PerceptualLossConfig,
    build_perceptual_loss,
    perceptual_loss_from_config,
)
from osdsr.models.vgg import VGG16

TINY = 16  # VGG16 width divisor: stage channels 4, 8, 16, 32, 32
STAGE_CHANNELS = (4, 8, 16, 32, 32)
DISTS_CHANNELS = (3, *STAGE_CHANNELS)  # stage 0 is the RGB input
# torchvision vgg16.features slices ending at relu1_2 ... relu5_3 (LPIPS's reference slicing)
TORCHVISION_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A tiny torchvision-keyed VGG16 checkpoint with features that are not all-positive."""
    torch.manual_seed(1)
    model = VGG16(TINY)
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(model.state_dict(), path)
    return path


def _lpips_head_file(path, scale: float = 1.0, drop: int | None = None):
    """A file in the official LPIPS layout (``lin{k}.model.1.weight``); head k is all ``scale * (k + 1)``."""
    state = {}
    for k, channels in enumerate(STAGE_CHANNELS):
        state[f"lin{k}.model.1.weight"] = torch.full((1, channels, 1, 1), scale * (k + 1))
    if drop is not None:
        del state[f"lin{drop}.model.1.weight"]
    torch.save(state, path)
    return path


def _dists_file(path, alpha: torch.Tensor, beta: torch.Tensor):
    torch.save({"alpha": alpha, "beta": beta}, path)
    return path


def _images(seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, 32, 32)
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)


def test_registry_names() -> None:
    assert set(PERCEPTUAL_LOSSES) == {"mse", "lpips", "ea-lpips", "dists", "ea-dists"}


def test_mse_by_hand() -> None:
    loss = build_perceptual_loss("mse")
    assert loss(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)).item() == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["lpips", "ea-lpips", "dists", "ea-dists"])
def test_builder_refuses_without_weights(name: str, vgg_file) -> None:
    with pytest.raises(ValueError) as info:
        build_perceptual_loss(name)
    message = str(info.value)
    assert message.startswith(f"perceptual loss {name!r} needs ImageNet VGG16 weights: pass vgg_weights=PATH")
    assert "(a torchvision vgg16 state dict" in message
    assert "head_weights=PATH" in message
    with pytest.raises(ValueError) as info:
        build_perceptual_loss(name, vgg_weights=vgg_file, vgg_width_divisor=TINY)
    assert "VGG16" not in str(info.value) and "head_weights=PATH" in str(info.value)


def test_dists_refusal_message_is_one_clear_line() -> None:
    with pytest.raises(ValueError) as info:
        build_perceptual_loss("dists", head_weights="weights.pt")
    assert str(info.value) == (
        "perceptual loss 'dists' needs ImageNet VGG16 weights: pass vgg_weights=PATH "
        "(a torchvision vgg16 state dict, .pth or .safetensors)"
    )


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown perceptual loss 'ssim'.*'ea-dists'"):
        build_perceptual_loss("ssim")


@pytest.mark.parametrize("name", ["lpips", "ea-lpips", "dists", "ea-dists"])
def test_random_weights_when_allowed_warn_and_give_zero_on_identical_images(name: str, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="osdsr.losses.perceptual"):
        loss = build_perceptual_loss(name, allow_random=True, vgg_width_divisor=TINY)
    assert "allow_random=True" in caplog.text and "RANDOM" in caplog.text
    x, _ = _images()
    assert abs(loss(x, x.clone()).item()) < 1e-6


def test_networks_are_frozen_and_stay_in_eval_mode(vgg_file) -> None:
    loss = build_perceptual_loss("ea-dists", vgg_weights=vgg_file, allow_random=True, vgg_width_divisor=TINY)
    container = torch.nn.ModuleDict({"loss": loss})
    container.train()
    assert not any(p.requires_grad for p in loss.parameters())
    assert not any(m.training for m in loss.base.modules())


def test_ea_dists_gradient_reaches_the_prediction(vgg_file) -> None:
    loss = build_perceptual_loss("ea-dists", vgg_weights=vgg_file, allow_random=True, vgg_width_divisor=TINY)
    pred, target = _images()
    pred.requires_grad_(True)
    value = loss(pred, target)
    value.backward()
    assert value.item() > 0
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0


def test_vgg_file_is_the_one_used(vgg_file) -> None:
    loss = build_perceptual_loss("lpips", vgg_weights=vgg_file, allow_random=True, vgg_width_divisor=TINY)
    assert torch.equal(loss.features[28].bias, torch.load(vgg_file)["features.28.bias"])


def _reference_lpips(vgg: VGG16, heads: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS Eq. 1 transcribed directly, with LPIPS's [-1, 1] input and ScalingLayer constants."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    hx, hy = (2 * x - 1 - shift) / scale, (2 * y - 1 - shift) / scale
    total = torch.zeros(x.shape[0])
    for (start, stop), w in zip(TORCHVISION_SLICES, heads):
        hx, hy = vgg.features[start:stop](hx), vgg.features[start:stop](hy)
        nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += ((nx - ny) ** 2 * w).sum(1).mean((1, 2))
    return total.mean()


def test_lpips_heads_load_from_the_official_layout_and_match_eq1(vgg_file, tmp_path) -> None:
    heads_path = _lpips_head_file(tmp_path / "vgg.pth", scale=0.1)
    loss = build_perceptual_loss(
        "lpips", vgg_weights=vgg_file, head_weights=heads_path, vgg_width_divisor=TINY
    )
    assert isinstance(loss, LPIPS)
    file_heads = [v for v in torch.load(heads_path).values()]
    for head, weight in zip(loss.heads, file_heads):
        assert torch.equal(head.weight, weight)
    x, y = _images()
    vgg = VGG16(TINY)
    vgg.load_state_dict(torch.load(vgg_file))
    expected = _reference_lpips(vgg, file_heads, x, y)
    assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)
    # the loss is linear in the heads: doubled heads, doubled loss
    doubled = _lpips_head_file(tmp_path / "vgg2.pth", scale=0.2)
    loss2 = build_perceptual_loss("lpips", vgg_weights=vgg_file, head_weights=doubled, vgg_width_divisor=TINY)
    assert loss2(x, y).item() == pytest.approx(2 * loss(x, y).item(), rel=1e-5)


def test_lpips_head_file_with_a_missing_head_is_refused(vgg_file, tmp_path) -> None:
    heads_path = _lpips_head_file(tmp_path / "vgg.pth", drop=4)
    with pytest.raises(ValueError, match=r"missing keys \[lin4\.model\.1\.weight\].*LPIPS v0.1"):
        build_perceptual_loss("lpips", vgg_weights=vgg_file, head_weights=heads_path, vgg_width_divisor=TINY)


def _stage0_only(values: float) -> torch.Tensor:
    """alpha or beta that weights only the three input-image channels (stage 0)."""
    weights = torch.zeros(1, sum(DISTS_CHANNELS), 1, 1)
    weights[:, :3] = values
    return weights


def test_dists_texture_term_by_hand(vgg_file, tmp_path) -> None:
    # Only alpha on the stage-0 (image) channels: DISTS = 1 - (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)
    # with constant images 0.5 and 0.25: 1 - (0.25 + 1e-6) / (0.3125 + 1e-6)
    path = _dists_file(tmp_path / "weights.pt", _stage0_only(1.0), _stage0_only(0.0))
    loss = build_perceptual_loss("dists", vgg_weights=vgg_file, head_weights=path, vgg_width_divisor=TINY)
    assert isinstance(loss, DISTS)
    x, y = torch.full((1, 3, 32, 32), 0.5), torch.full((1, 3, 32, 32), 0.25)
    assert loss(x, y).item() == pytest.approx(1 - (0.25 + 1e-6) / (0.3125 + 1e-6), abs=1e-6)


def test_dists_structure_term_by_hand(vgg_file, tmp_path) -> None:
    # Only beta on stage 0. x is a 0.25/0.75 checkerboard (var 1/16), y = 2x - 0.5 a 0/1 checkerboard
    # (var 1/4), covariance 1/8: DISTS = 1 - (2/8 + c2) / (1/16 + 1/4 + c2)
    path = _dists_file(tmp_path / "weights.pt", _stage0_only(0.0), _stage0_only(2.0))
    loss = build_perceptual_loss("dists", vgg_weights=vgg_file, head_weights=path, vgg_width_divisor=TINY)
    checker = (torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2
    x = (0.25 + 0.5 * checker).float().expand(1, 3, 32, 32)
    y = 2 * x - 0.5
    assert loss(x, y).item() == pytest.approx(1 - (0.25 + 1e-6) / (0.3125 + 1e-6), abs=1e-6)


def _reference_dists(vgg: VGG16, alpha: torch.Tensor, beta: torch.Tensor, x, y) -> torch.Tensor:
    """DISTS as in its reference code: torchvision slices, L2 pooling, E[xy] - mu_x mu_y covariance."""

    def l2pool(h: torch.Tensor) -> torch.Tensor:
        taps = torch.tensor([0.5, 1.0, 0.5])
        g = torch.outer(taps, taps)
        g = (g / g.sum()).expand(h.shape[1], 1, 3, 3)
        return (F.conv2d(h**2, g, stride=2, padding=1, groups=h.shape[1]) + 1e-12).sqrt()

    def stages(image: torch.Tensor) -> list[torch.Tensor]:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        h, out = (image - mean) / std, [image]
        for k, (start, stop) in enumerate(TORCHVISION_SLICES):
            h = vgg.features[start + (k > 0) : stop](l2pool(h) if k > 0 else h)
            out.append(h)
        return out

    w_sum = alpha.sum() + beta.sum()
    alphas = torch.split(alpha / w_sum, DISTS_CHANNELS, dim=1)
    betas = torch.split(beta / w_sum, DISTS_CHANNELS, dim=1)
    dist = 0
    for fx, fy, a, b in zip(stages(x), stages(y), alphas, betas):
        mx, my = fx.mean([2, 3], keepdim=True), fy.mean([2, 3], keepdim=True)
        s1 = (2 * mx * my + 1e-6) / (mx**2 + my**2 + 1e-6)
        vx, vy = ((fx - mx) ** 2).mean([2, 3], keepdim=True), ((fy - my) ** 2).mean([2, 3], keepdim=True)
        cov = (fx * fy).mean([2, 3], keepdim=True) - mx * my
        s2 = (2 * cov + 1e-6) / (vx + vy + 1e-6)
        dist = dist + (a * s1 + b * s2).sum(1, keepdim=True)
    return (1 - dist.squeeze()).mean()


def test_dists_alpha_beta_load_from_the_official_layout_and_match_the_reference(vgg_file, tmp_path) -> None:
    generator = torch.Generator().manual_seed(3)
    alpha = 0.1 + 0.01 * torch.randn(1, sum(DISTS_CHANNELS), 1, 1, generator=generator)
    beta = 0.1 + 0.01 * torch.randn(1, sum(DISTS_CHANNELS), 1, 1, generator=generator)
    path = _dists_file(tmp_path / "weights.pt", torch.nn.Parameter(alpha), torch.nn.Parameter(beta))
    loss = build_perceptual_loss("dists", vgg_weights=vgg_file, head_weights=path, vgg_width_divisor=TINY)
    assert torch.equal(loss.alpha, alpha) and torch.equal(loss.beta, beta)
    vgg = VGG16(TINY)
    vgg.load_state_dict(torch.load(vgg_file))
    x, y = _images()
    assert loss(x, y).item() == pytest.approx(_reference_dists(vgg, alpha, beta, x, y).item(), abs=1e-5)


def test_dists_weights_of_the_wrong_size_are_refused(vgg_file, tmp_path) -> None:
    full_size = torch.zeros(1, 1475, 1, 1)
    path = _dists_file(tmp_path / "weights.pt", full_size, full_size)
    expected = r"wrong shapes \[alpha \(1, 1475, 1, 1\) \(expected \(1, 95, 1, 1\)\)"
    with pytest.raises(ValueError, match=expected):
        build_perceptual_loss("dists", vgg_weights=vgg_file, head_weights=path, vgg_width_divisor=TINY)


@pytest.mark.parametrize("name", ["ea-lpips", "ea-dists"])
def test_edge_aware_adds_the_loss_of_sobel_maps(name: str, vgg_file) -> None:
    loss = build_perceptual_loss(name, vgg_weights=vgg_file, allow_random=True, vgg_width_divisor=TINY)
    assert isinstance(loss, EdgeAwareLoss)
    x, y = _images()
    expected = loss.base(x, y) + loss.base(sobel_magnitude(x), sobel_magnitude(y))  # D3SR Eq. 5
    assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss(x, y).item() > loss.base(x, y).item()


def test_mismatched_inputs_are_refused() -> None:
    loss = build_perceptual_loss("dists", allow_random=True, vgg_width_divisor=TINY)
    with pytest.raises(ValueError, match=r"DISTS: expected pred and target of the same shape \[B, 3, H, W\]"):
        loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 16, 16))


def test_config_maps_onto_the_builder(vgg_file) -> None:
    config = from_dict(
        PerceptualLossConfig,
        {
            "name": "ea-lpips",
            "weight": 0.5,
            "vgg_weights": str(vgg_file),
            "allow_random": True,
            "vgg_width_divisor": TINY,
        },
    )
    loss = perceptual_loss_from_config(config)
    assert isinstance(loss, EdgeAwareLoss) and isinstance(loss.base, LPIPS)
    with pytest.raises(ValueError, match="'vgg' is not one of"):
        from_dict(PerceptualLossConfig, {"name": "vgg"})
