"""The noise-aware discriminator: tiny SD-2.1- and SDXL-shaped UNet folders, and the full sizes on meta."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from checkpointing import assert_checkpointing_keeps_less_and_same_gradients
from diffusers import UNet2DConditionModel
from tiny_sd import TINY_SD_UNET, TINY_SDXL_UNET

from osdsr.methods.d3sr import DiscriminatorConfig
from osdsr.models.nad_discriminator import (
    NAD_ARCHITECTURES,
    NULL_PROMPT_LENGTH,
    SDXL_UNET_CONFIG,
    build_nad_discriminator,
    nad_complexity_parts,
)
from osdsr.models.sd_generator import SD21_UNET_CONFIG, LoRAConfig

TINY = {"sd21": TINY_SD_UNET, "sdxl": TINY_SDXL_UNET}
LORA = LoRAConfig(rank=2, alpha=2.0)


@pytest.fixture(scope="module")
def unet_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nad")
    for kind, config in TINY.items():
        torch.manual_seed(1)
        UNet2DConditionModel(**config).save_pretrained(root / kind / "unet")
    return {kind: root / kind for kind in TINY}


def nad(kind: str, folder: Path, **changes: Any) -> torch.nn.Module:
    config = DiscriminatorConfig(kind=kind, pretrained=str(folder), lora=LORA, channels=8, **changes)
    return build_nad_discriminator(config, latent_channels=4)


def test_the_dropped_up_blocks_are_handed_back_to_the_kernel(
    unet_folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the loaded UNet is gone (only its encoder kept), the heap's free pages are released: else a
    full SDXL's up blocks stay resident (2.3 GiB in bf16, benchmarks/fullsize_smoke.py's d3sr row)."""
    import gc

    from osdsr.models import nad_discriminator

    alive: list[int] = []

    def record() -> bool:
        gc.collect()
        alive.append(sum(isinstance(o, UNet2DConditionModel) for o in gc.get_objects()))
        return True

    monkeypatch.setattr(nad_discriminator, "release_freed_memory", record)
    nad("sdxl", unet_folders["sdxl"])
    assert alive == [0]
    build_nad_discriminator(DiscriminatorConfig(kind="sdxl"), latent_channels=4, device="meta")
    assert alive == [0]  # nothing was loaded on meta


@pytest.mark.parametrize("kind", ["sd21", "sdxl"])
def test_encoder_is_the_unet_up_to_its_mid_block(kind: str, unet_folders: dict[str, Path]) -> None:
    """LoRA starts at zero, so the encoder's features are the pretrained UNet's own mid-block output."""
    discriminator = nad(kind, unet_folders[kind]).eval()
    unet = UNet2DConditionModel.from_pretrained(unet_folders[kind] / "unet").eval()
    z = torch.randn(2, 4, 8, 8)
    t = torch.tensor([0, 640])
    prompt = torch.zeros(2, NULL_PROMPT_LENGTH, unet.config.cross_attention_dim)
    added = {}
    if kind == "sdxl":
        added = {"text_embeds": torch.zeros(2, 8), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    captured: list[torch.Tensor] = []
    unet.mid_block.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        unet(z, t, encoder_hidden_states=prompt, added_cond_kwargs=added)
        expected_logits = discriminator.head(captured[0])
        logits = discriminator(z, t)
    assert logits.shape == (2, 1, 4, 4)  # one logit per patch of the mid-block grid
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_sdxl_size_conditioning_follows_the_input_size(unet_folders: dict[str, Path]) -> None:
    discriminator = nad("sdxl", unet_folders["sdxl"]).eval()
    seen: list[torch.Tensor] = []
    original = discriminator.encoder.add_time_proj.forward
    discriminator.encoder.add_time_proj.forward = lambda ids: seen.append(ids) or original(ids)
    with torch.no_grad():
        discriminator(torch.randn(1, 4, 6, 10), torch.tensor([3]))
    assert seen[0].tolist() == [48.0, 80.0, 0.0, 0.0, 48.0, 80.0]  # (H, W, top, left, H, W) in pixels


@pytest.mark.parametrize("kind", ["sd21", "sdxl"])
@pytest.mark.parametrize("prompt", ["fixed", "learnable"])
def test_only_lora_head_and_learnable_prompt_train(kind: str, prompt: str, unet_folders: dict[str, Path]) -> None:
    discriminator = nad(kind, unet_folders[kind], prompt_embedding=prompt)
    trainable = {n for n, p in discriminator.named_parameters() if p.requires_grad}
    base = {n: p.detach().clone() for n, p in discriminator.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in discriminator.named_parameters() if p.requires_grad}
    assert base and trainable
    expected_prompts = {"null_prompt", "null_text_embeds"} if kind == "sdxl" else {"null_prompt"}
    assert {n for n in trainable if n.startswith("null_")} == (expected_prompts if prompt == "learnable" else set())
    assert all("lora_" in n or n.startswith("head.") or n.startswith("null_") for n in trainable)
    assert any(n.startswith("head.") for n in trainable) and any("lora_A" in n for n in trainable)

    optimizer = torch.optim.AdamW([p for p in discriminator.parameters() if p.requires_grad], lr=1e-2)
    discriminator(torch.randn(2, 4, 8, 8), torch.tensor([5, 900])).square().mean().backward()
    optimizer.step()
    after = dict(discriminator.named_parameters())
    assert all(after[n].grad is None for n in base)
    assert all(torch.equal(after[n], value) for n, value in base.items())
    changed = {n for n, value in start.items() if not torch.equal(after[n], value)}
    assert {n for n in trainable if n.startswith(("head.", "null_"))} <= changed
    assert any("lora_B" in n for n in changed)


def test_missing_or_wrong_pretrained_folder_is_a_clear_error(unet_folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--set discriminator.pretrained=DIR"):
        build_nad_discriminator(DiscriminatorConfig(kind="sdxl"), latent_channels=4)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        nad("sd21", tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        nad("sd21", tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        nad("sd21", tmp_path)
    with pytest.raises(ValueError, match="addition_embed_type"):
        nad("sdxl", unet_folders["sd21"])
    with pytest.raises(ValueError, match="addition_embed_type"):
        nad("sd21", unet_folders["sdxl"])
    with pytest.raises(ValueError, match="latent channels"):
        build_nad_discriminator(DiscriminatorConfig(kind="sd21", pretrained=str(unet_folders["sd21"])), 16)


def test_official_unet_architectures_have_the_official_sizes() -> None:
    """SD-2.1-base and SDXL-base-1.0 UNets: 865,910,724 and 2,567,463,684 parameters."""
    sizes = {}
    for kind, config in (("sd21", SD21_UNET_CONFIG), ("sdxl", SDXL_UNET_CONFIG)):
        with torch.device("meta"):
            sizes[kind] = sum(p.numel() for p in UNet2DConditionModel(**config).parameters())
    assert sizes == {"sd21": 865_910_724, "sdxl": 2_567_463_684}
    assert NAD_ARCHITECTURES == {"sd21": SD21_UNET_CONFIG, "sdxl": SDXL_UNET_CONFIG}


@pytest.mark.parametrize(("kind", "stride"), [("sd21", 8), ("sdxl", 4)])  # 3 or 2 downsamplings
def test_full_size_discriminators_on_meta(kind: str, stride: int) -> None:
    config = DiscriminatorConfig(kind=kind, channels=512)
    discriminator = build_nad_discriminator(config, latent_channels=4, device="meta")
    assert all(p.is_meta for p in discriminator.parameters())
    assert not any(n.startswith("encoder.up_blocks") for n, _ in discriminator.named_parameters())
    head = sum(p.numel() for p in discriminator.head.parameters())
    assert head == 2 * 1280 + 1280 * 512 + 512 + 512 + 1  # GroupNorm + two 1x1 convolutions
    logits = discriminator(torch.zeros(2, 4, 64, 64, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    assert logits.shape == (2, 1, 64 // stride, 64 // stride)


def test_complexity_parts_split_lora_encoder_and_head() -> None:
    from osdsr.complexity import measure

    parts = nad_complexity_parts(DiscriminatorConfig(kind="sd21", channels=512), size=64)
    report = measure(parts, train=True)
    encoder, _ = parts["encoder"]
    lora = sum(p.numel() for n, p in encoder.named_parameters() if "lora_" in n)
    assert report["encoder"].trainable == lora > 0  # LoRA only: the UNet base is frozen
    assert report["head"].trainable == report["head"].params == 2 * 1280 + 1280 * 512 + 512 + 512 + 1
    assert report["total"].params == report["encoder"].params + report["head"].params
    # one position (64 px -> 8x8 latent -> 1x1 mid grid): forward, weight gradients and, since the
    # encoder's LoRA lies upstream, input gradients of the two 1x1 convolutions
    assert report["head"].macs == 3 * (1280 * 512 + 512 * 1)


@pytest.mark.parametrize("kind", ["sd21", "sdxl"])
def test_gradient_checkpointing_keeps_less_for_backward_with_the_same_gradients(
    kind: str, unet_folders: dict[str, Path]
) -> None:
    torch.manual_seed(0)
    discriminator = nad(kind, unet_folders[kind]).train()
    for name, p in discriminator.named_parameters():  # LoRA B starts at zero: give every adapter a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([0, 640])

    assert_checkpointing_keeps_less_and_same_gradients(
        discriminator, discriminator.enable_gradient_checkpointing, lambda: discriminator(z, t).square().mean()
    )
