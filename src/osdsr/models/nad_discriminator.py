"""The noise-aware discriminator (NAD, DFOSD Sec. 3.2; D3SR's large diffusion discriminator, Sec. 3.2).

A pretrained Stable Diffusion UNet cut after its mid block: ``conv_in`` + time embedding + down blocks
+ mid block of a diffusers ``UNet2DConditionModel`` (SD-2.1 or SDXL), frozen and tuned with LoRA
(peft), followed by a randomly initialised MLP head of 1x1 convolutions that gives one realism logit
per patch of the mid-block grid: ``forward(z_noisy, t) -> [B, 1, h / 2^k, w / 2^k]`` with ``k`` the
number of downsampling blocks (3 for SD-2.1, 2 for SDXL). ``t`` is the UNet's timestep input (a
UNet index, see ``osdsr.diffusion.ddpm``); the network knows nothing of schedules.

Conditioning without a text encoder:
- cross-attention sees a null prompt of ``NULL_PROMPT_LENGTH`` tokens of the UNet's
  ``cross_attention_dim``, zeros (``prompt_embedding: fixed``) or zero-initialised and trained with
  the head (``learnable``);
- SDXL's added embedding (``addition_embed_type: text_time``) needs a pooled text embedding and six
  size/crop ids: the pooled embedding is a null one (zeros or learnable, as the prompt), and the ids
  say "an uncropped image of the input's size" ``(H, W, 0, 0, H, W)`` with ``H, W`` the latent size
  times ``LATENT_STRIDE``.
The discriminator judges the generator's latents (SD-2.1 VAE) also with the SDXL UNet, as in D3SR; the
LoRA adapts the encoder to them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from osdsr.allocator import release_freed_memory
from osdsr.models.sd_generator import SD21_UNET_CONFIG, lora_targets

if TYPE_CHECKING:
    from osdsr.methods.d3sr import DiscriminatorConfig

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (architecture fields only).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

# discriminator kind -> the full-size UNet architecture it is cut from (for ``meta`` builds)
NAD_ARCHITECTURES: dict[str, dict[str, Any]] = {"sd21": SD21_UNET_CONFIG, "sdxl": SDXL_UNET_CONFIG}
NAD_ADDITION_EMBED = {"sd21": None, "sdxl": "text_time"}  # what each kind's UNet config must say

NULL_PROMPT_LENGTH = 77  # tokens of the null prompt: CLIP's context length, as SD / SDXL prompts
SDXL_TIME_IDS = 6  # SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w)
LATENT_STRIDE = 8  # pixels per latent of the SD / SDXL autoencoders (for SDXL's size ids)
HEAD_NORM_GROUPS = 32


class UNetEncoder(nn.Module):
    """``conv_in``, time (and SDXL text-time) embedding, down blocks and mid block of a diffusers UNet."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        config = unet.config
        unsupported = {
            "class_embed_type": config.class_embed_type,
            "encoder_hid_dim_type": config.encoder_hid_dim_type,
            "time_cond_proj_dim": config.time_cond_proj_dim,
        }
        unsupported = {k: v for k, v in unsupported.items() if v is not None}
        if config.addition_embed_type not in (None, "text_time"):
            unsupported["addition_embed_type"] = config.addition_embed_type
        if unsupported or unet.mid_block is None or not isinstance(config.cross_attention_dim, int):
            raise ValueError(f"NAD: unsupported UNet configuration {unsupported or 'without mid block'}; "
                             "give an SD-2.1 or SDXL UNet")
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.time_embed_act = unet.time_embed_act
        self.text_time = config.addition_embed_type == "text_time"
        self.add_time_proj = unet.add_time_proj if self.text_time else None
        self.add_embedding = unet.add_embedding if self.text_time else None
        self.conv_in = unet.conv_in
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.cross_attention_dim: int = config.cross_attention_dim
        self.gradient_checkpointing = False  # recompute each block's activations in backward
        self.out_channels: int = config.block_out_channels[-1]
        self.text_embed_dim = (
            config.projection_class_embeddings_input_dim - SDXL_TIME_IDS * config.addition_time_embed_dim
            if self.text_time
            else 0
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mid-block features of ``sample`` at UNet timestep ``timestep`` ``[B]``."""
        emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        if self.text_time:
            if text_embeds is None or time_ids is None:
                raise ValueError("NAD: an SDXL UNet needs text_embeds and time_ids")
            time_embeds = self.add_time_proj(time_ids.flatten()).reshape(sample.shape[0], -1)
            emb = emb + self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        hidden = self.conv_in(sample)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, _ = self._run(block, hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden, _ = self._run(block, hidden_states=hidden, temb=emb)
        if getattr(self.mid_block, "has_cross_attention", False):
            return self._run(self.mid_block, hidden, emb, encoder_hidden_states=encoder_hidden_states)
        return self._run(self.mid_block, hidden, emb)

    def _run(self, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``block(*args, **kwargs)``, checkpointed when ``gradient_checkpointing`` is on. The recomputation
        in backward must see the weights as the forward did: the generator step freezes them for both
        (``osdsr.train.gradients_off`` around its forward and backward)."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)


class NoiseAwareDiscriminator(nn.Module):
    """A (LoRA-tuned) UNet encoder + MLP head: one realism logit per patch of noised latents."""

    def __init__(self, encoder: UNetEncoder, head_channels: int, learnable_prompt: bool) -> None:
        super().__init__()
        self.encoder = encoder
        prompt = torch.zeros(1, NULL_PROMPT_LENGTH, encoder.cross_attention_dim)
        self._add_embedding("null_prompt", prompt, learnable_prompt)
        if encoder.text_time:
            self._add_embedding("null_text_embeds", torch.zeros(1, encoder.text_embed_dim), learnable_prompt)
        width = encoder.out_channels
        self.head = nn.Sequential(  # the per-patch MLP (randomly initialised)
            nn.GroupNorm(math.gcd(HEAD_NORM_GROUPS, width), width),
            nn.SiLU(),
            nn.Conv2d(width, head_channels, 1),
            nn.SiLU(),
            nn.Conv2d(head_channels, 1, 1),
        )

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the encoder's block activations in backward instead of keeping them."""
        self.encoder.gradient_checkpointing = True

    def _add_embedding(self, name: str, value: torch.Tensor, learnable: bool) -> None:
        if learnable:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    def forward(self, z_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, h', w']`` for noised latents ``z_noisy`` at UNet timestep ``t`` ``[B]``."""
        return self.head(self.features(z_noisy, t))

    def features(self, z_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The encoder's mid-block features under the null conditioning."""
        batch = z_noisy.shape[0]
        prompt = self.null_prompt.to(z_noisy.dtype).expand(batch, -1, -1)
        text_embeds = time_ids = None
        if self.encoder.text_time:
            height, width = (side * LATENT_STRIDE for side in z_noisy.shape[-2:])
            ids = torch.tensor([height, width, 0, 0, height, width], dtype=z_noisy.dtype, device=z_noisy.device)
            time_ids = ids.expand(batch, -1)
            text_embeds = self.null_text_embeds.to(z_noisy.dtype).expand(batch, -1)
        return self.encoder(z_noisy, t, prompt, text_embeds, time_ids)


def _unet_folder(config: DiscriminatorConfig) -> Path:
    if config.pretrained is None:
        name = "SD-2.1(-base)" if config.kind == "sd21" else "SDXL-base"
        raise ValueError(
            f"discriminator.kind {config.kind} needs discriminator.pretrained: a local diffusers folder of "
            f"{name} (with unet/); set it with --set discriminator.pretrained=DIR"
        )
    root = Path(config.pretrained)
    if not root.is_dir():
        raise FileNotFoundError(
            f"discriminator.pretrained {root}: not a folder; set it to a local diffusers model folder "
            "with --set discriminator.pretrained=DIR"
        )
    if not (root / "unet" / "config.json").is_file():
        raise FileNotFoundError(
            f"discriminator.pretrained {root}: no unet/config.json; expected a diffusers model folder"
        )
    return root / "unet"


def build_nad_discriminator(
    config: DiscriminatorConfig,
    latent_channels: int,
    device: torch.device | str | None = None,
    random_init: bool = False,
    frozen_dtype: torch.dtype | None = None,
) -> NoiseAwareDiscriminator:
    """The NAD of ``config.kind`` (sd21 / sdxl) from the local folder ``config.pretrained``.

    On ``device="meta"`` nothing is allocated; there, or with ``random_init`` (memory estimates on fake
    tensors), a config without ``pretrained`` gets the kind's full-size architecture
    (``NAD_ARCHITECTURES``) with random weights. ``frozen_dtype`` (mixed-precision training): the
    pretrained UNet is read from its files in this dtype (no float32 copy of the whole UNet first); its
    LoRA adapters follow it until the trainer's placement puts the trainable parts in float32.
    """
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    if config.kind not in NAD_ARCHITECTURES:
        raise ValueError(f"discriminator.kind {config.kind!r} is not a NAD kind; one of {sorted(NAD_ARCHITECTURES)}")
    meta = device is not None and torch.device(device).type == "meta"
    from_architecture = (meta or random_init) and config.pretrained is None
    if from_architecture:
        source, architecture = f"the {config.kind} architecture", NAD_ARCHITECTURES[config.kind]
    else:
        folder = _unet_folder(config)
        source = str(folder)
        saved = json.loads((folder / "config.json").read_text())
        architecture = {k: v for k, v in saved.items() if not k.startswith("_")}
    expected = NAD_ADDITION_EMBED[config.kind]
    if architecture.get("addition_embed_type") != expected:
        raise ValueError(
            f"discriminator.kind {config.kind}: {source} has addition_embed_type "
            f"{architecture.get('addition_embed_type')!r}, an {config.kind} UNet has {expected!r}; "
            "check discriminator.kind and discriminator.pretrained"
        )
    if architecture.get("in_channels", 4) != latent_channels:
        raise ValueError(
            f"discriminator {source}: UNet takes {architecture.get('in_channels')} latent channels, "
            f"the generator makes {latent_channels}"
        )
    if meta:
        with torch.device("meta"):
            unet = UNet2DConditionModel(**architecture)
    elif from_architecture:
        unet = UNet2DConditionModel(**architecture)
    else:
        unet = UNet2DConditionModel.from_pretrained(folder, local_files_only=True, torch_dtype=frozen_dtype)
    encoder = UNetEncoder(unet).requires_grad_(False)
    del unet  # up blocks and output layers are not used
    if not meta:
        release_freed_memory()  # else the dropped blocks stay resident (osdsr.allocator)
    with torch.device(device or "cpu"):
        lora = LoraConfig(
            r=config.lora.rank,
            lora_alpha=config.lora.alpha,
            target_modules=lora_targets(encoder, config.lora),
            init_lora_weights="gaussian",
        )
        inject_adapter_in_model(lora, encoder)
        discriminator = NoiseAwareDiscriminator(encoder, config.channels, config.prompt_embedding == "learnable")
    return discriminator if device is None or meta else discriminator.to(device)


class _Features(nn.Module):
    """Runs a NAD up to its mid block; its parameters are the encoder's only (a part for complexity)."""

    def __init__(self, discriminator: NoiseAwareDiscriminator) -> None:
        super().__init__()
        self.runner = [discriminator]  # a list: not registered, so parameters() sees only the encoder
        self.encoder = discriminator.encoder

    def forward(self, z_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.runner[0].features(z_noisy, t)


def nad_complexity_parts(
    config: DiscriminatorConfig, size: int
) -> dict[str, tuple[nn.Module, Callable[[], tuple[torch.Tensor, ...]]]]:
    """The full-size NAD of ``config.kind`` on ``meta`` as parts (LoRA-tuned encoder, MLP head) with input
    builders, for ``osdsr complexity --train``: one noised latent of a ``size`` x ``size`` image."""
    channels = NAD_ARCHITECTURES[config.kind]["in_channels"]
    discriminator = build_nad_discriminator(config, latent_channels=channels, device="meta")
    latent = size // LATENT_STRIDE
    downsamplings = sum(1 for block in discriminator.encoder.down_blocks if block.downsamplers is not None)
    grid = latent // 2**downsamplings
    width = discriminator.encoder.out_channels

    def noised_latent() -> tuple[torch.Tensor, ...]:
        return torch.zeros(1, channels, latent, latent, device="meta"), torch.zeros(1, dtype=torch.long, device="meta")

    def features() -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, width, grid, grid, device="meta"),)

    return {"encoder": (_Features(discriminator), noised_latent), "head": (discriminator.head, features)}
