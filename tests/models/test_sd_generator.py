"""The one-step SD generator: D3SR Eq. 1 through the UNet, LoRA-only training, weights round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from checkpointing import assert_checkpointing_keeps_less_and_same_gradients
from tiny_sd import TINY_SD_UNET, TINY_SD_VAE

from osdsr.models.sd_generator import (
    LoRAConfig,
    SDGeneratorConfig,
    build_sd_generator,
    load_sd_generator,
    lora_targets,
    merge_lora,
    save_sd_model,
)
from osdsr.models.sd_unet import SDUNet

TINY_UNET: dict[str, Any] = {
    "sample_size": 4,
    "in_channels": 48,
    "out_channels": 48,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_dim": 8,
    "norm_num_groups": 8,
}


def tiny_config(**changes: Any) -> SDGeneratorConfig:
    """A pixel-unshuffle (f4, 48 latent channels) generator: no VAE weights needed."""
    values: dict[str, Any] = {
        "autoencoder": "pixel_unshuffle",
        "unshuffle_factor": 4,
        "unet": TINY_UNET,
        "timestep": 50,
        "prompt_length": 4,
        "lora": LoRAConfig(rank=2, alpha=2.0),
    }
    return SDGeneratorConfig(**{**values, **changes})


def test_denoise_is_eq1_on_the_unet_output() -> None:
    generator = build_sd_generator(tiny_config(lora=None)).eval()
    z_lr = torch.randn(2, 48, 4, 4)
    with torch.no_grad():
        eps = generator.unet(z_lr, torch.tensor([50, 50]), encoder_hidden_states=torch.zeros(2, 4, 8)).sample
        z_hr = generator.denoise(z_lr)
    abar = generator.schedule.alphas_cumprod[50].item()  # T_L = 50 is a UNet index
    torch.testing.assert_close(z_hr, (z_lr - (1 - abar) ** 0.5 * eps) / abar**0.5)  # D3SR Eq. 1


def test_lora_generator_trains_only_adapters_and_learnable_prompt() -> None:
    generator = build_sd_generator(tiny_config(prompt_embedding="learnable"))
    trainable = [n for n, p in generator.named_parameters() if p.requires_grad]
    assert "prompt_embedding" in trainable
    assert all("lora_" in n for n in trainable if n != "prompt_embedding")
    fixed = build_sd_generator(tiny_config())
    assert "prompt_embedding" in dict(fixed.named_buffers())


def test_unknown_lora_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="match no module"):
        lora_targets(torch.nn.Linear(2, 2), LoRAConfig(target_modules=("to_q",)))


def test_model_folder_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    config = tiny_config(lora=None)
    generator = build_sd_generator(config).eval()
    save_sd_model(generator, config, tmp_path / "model")
    loaded, meta = load_sd_generator(tmp_path / "model")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(generator(x)[1], loaded.eval()(x)[1])
    assert meta["model_type"] == "sd-onestep"


def test_lora_file_needs_a_base_and_merging_keeps_outputs(tmp_path: Path) -> None:
    config = tiny_config()
    generator = build_sd_generator(config).eval()
    with torch.no_grad():  # move the adapters away from their zero start
        for name, param in generator.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_sd_model(generator, config, tmp_path / "lora")
    save_sd_model(generator, config, tmp_path / "lora.safetensors", model_type="d3sr")
    with pytest.raises(ValueError, match="--pretrained"):
        load_sd_generator(tmp_path / "lora.safetensors")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = generator(x)[1]
        merge_lora(generator)
        torch.testing.assert_close(generator(x)[1], expected, rtol=1e-4, atol=1e-5)


def test_model_folder_with_a_native_unet_loads_without_diffusers_and_gives_identical_outputs(tmp_path: Path) -> None:
    unet = {**TINY_UNET, "down_block_types": ["DownBlock2D"] * 2, "up_block_types": ["UpBlock2D"] * 2}
    config = tiny_config(lora=None, unet=unet, prompt_embedding="learnable")
    generator = build_sd_generator(config).eval()  # diffusers' UNet, as training builds it
    with torch.no_grad():
        generator.prompt_embedding.normal_()
    save_sd_model(generator, config, tmp_path / "model")
    loaded, _ = load_sd_generator(tmp_path / "model")
    assert isinstance(loaded.unet, SDUNet)
    x = torch.rand(2, 3, 24, 20) * 2 - 1
    with torch.no_grad():
        assert torch.equal(generator(x)[1], loaded.eval()(x)[1])


def test_a_stored_prompt_embedding_is_used_without_running_the_text_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LoRA file (on a base folder) and a model folder carry their prompt embedding: loading them never
    computes one (``_prompt_embedding`` runs the base folder's CLIP text encoder when it has one)."""
    from osdsr.models import sd_generator

    build_sd_generator(tiny_config(lora=None)).unet.save_pretrained(tmp_path / "base" / "unet")
    for name, config in [("lora.safetensors", tiny_config(pretrained=str(tmp_path / "base"), prompt_embedding="learnable")),
                         ("model", tiny_config(lora=None))]:
        generator = build_sd_generator(config)
        with torch.no_grad():
            generator.prompt_embedding.normal_()
        save_sd_model(generator, config, tmp_path / name, model_type="dfosd")

        def text_encoder_run(*args: object) -> torch.Tensor:
            raise AssertionError("the text encoder ran")

        with monkeypatch.context() as patch:
            patch.setattr(sd_generator, "_prompt_embedding", text_encoder_run)
            loaded, _ = load_sd_generator(tmp_path / name)
        assert torch.equal(loaded.prompt_embedding, generator.prompt_embedding), name


def test_gradient_checkpointing_of_unet_and_vae_decoder_keeps_less_with_the_same_gradients() -> None:
    torch.manual_seed(0)
    generator = build_sd_generator(tiny_config(autoencoder="kl", vae=TINY_SD_VAE, unet=TINY_SD_UNET, prompt_length=4))
    for name, p in generator.named_parameters():  # LoRA B starts at zero: give every adapter a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(1, 3, 32, 32) * 2 - 1

    assert_checkpointing_keeps_less_and_same_gradients(
        generator, generator.enable_gradient_checkpointing, lambda: generator(x)[1].square().mean()
    )
    assert generator.unet.is_gradient_checkpointing and generator.autoencoder.decoder.gradient_checkpointing


def test_the_loaded_sr_model_encodes_channels_last_latents_with_the_same_outputs(tmp_path: Path) -> None:
    """Inference loads the UNet channels-last and the latents with it: same values, no layout mixing."""
    from osdsr.model_loading import LoadOptions
    from osdsr.models.sd_generator import SDSRModel, load_sd_sr_model

    unet = {**TINY_UNET, "down_block_types": ["DownBlock2D"] * 2, "up_block_types": ["UpBlock2D"] * 2}
    config = tiny_config(lora=None, unet=unet, prompt_embedding="learnable")
    save_sd_model(build_sd_generator(config), config, tmp_path / "model")
    model = load_sd_sr_model(tmp_path / "model", LoadOptions())
    plain = SDSRModel(load_sd_generator(tmp_path / "model")[0]).eval()
    lr = torch.rand(1, 3, 12, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latent = model.encode(lr)
        assert latent.is_contiguous(memory_format=torch.channels_last) and plain.encode(lr).is_contiguous()
        torch.testing.assert_close(latent, plain.encode(lr), rtol=0, atol=0)
        torch.testing.assert_close(model.decode(model.denoise(latent, None)), plain.decode(plain.denoise(latent, None)))
