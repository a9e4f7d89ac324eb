"""The one-step Stable-Diffusion generator of D3SR and DFOSD.

``x_L`` (bicubic-upsampled to HR size) -> ``z_L = E(x_L)`` -> one UNet evaluation at the fixed step
``T_L`` -> ``z_H = (z_L - sqrt(1 - abar) eps) / sqrt(abar)`` (D3SR Eq. 1) -> ``x_H = D(z_H)``.

The UNet is diffusers' ``UNet2DConditionModel``, tuned with LoRA through peft (a model folder whose
UNet ``osdsr.models.sd_unet`` implements is loaded into that diffusers-free copy); the autoencoder is
diffusers' ``AutoencoderKL`` (frozen) or, for small models trained from scratch, the lossless
``PixelUnshuffleAutoencoder``. There is no text encoder at run time: the prompt embedding is a fixed
buffer (D3SR) or a learnable parameter (DFOSD), stored with the weights.

Weights on disk:
- a *model folder* (``config.json`` + ``model.safetensors``) holds a whole generator (small models);
- a *LoRA file* (one ``.safetensors`` whose metadata holds the config) holds only the trained part
  (LoRA + prompt embedding) and is loaded on top of a local SD base folder (``--pretrained``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from osdsr.config import from_dict, ranged, to_dict
from osdsr.diffusion.ddpm import SD21_SCHEDULER_CONFIG, DDPMSchedule
from osdsr.models.autoencoders import PixelUnshuffleAutoencoder
from osdsr.models.sd_unet import SDUNet, native_unet_config

logger = logging.getLogger(__name__)

SCALE = 4
SD_MODEL_TYPES = ("d3sr", "dfosd", "sd-onestep")
LORA_FILE_FORMAT = "osdsr-sd-lora-v1"

# stabilityai/stable-diffusion-2-1-base, unet/config.json (architecture fields only).
SD21_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

# stabilityai/stable-diffusion-2-1-base, vae/config.json (architecture fields only).
SD21_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# LoRA on every attention projection and every ResNet convolution of the UNet (rank 16 gives
# 16.6M parameters on SD-2.1: 949.6M + 16.6M = 966.2M, D3SR Table 4 reports 966.3M).
SD_LORA_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "conv", "time_emb_proj",
)


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = ranged(16, "[1, inf)")
    alpha: float = ranged(16.0, "(0, inf)")
    target_modules: tuple[str, ...] = SD_LORA_TARGETS


@dataclass(frozen=True)
class SDGeneratorConfig:
    """One-step SD generator. ``pretrained`` (a local diffusers folder) wins over ``unet``/``vae``."""

    pretrained: str | None = None
    unet: dict[str, Any] | None = None  # UNet2DConditionModel kwargs when not pretrained
    vae: dict[str, Any] | None = None  # AutoencoderKL kwargs when not pretrained and autoencoder == "kl"
    autoencoder: Literal["kl", "pixel_unshuffle"] = "kl"
    unshuffle_factor: int = ranged(8, "[1, inf)")  # latent stride of the pixel_unshuffle autoencoder (8 = SD's f8 grid)
    scheduler: dict[str, Any] | None = None  # DDPM scheduler config when not pretrained
    timestep: int = ranged(999, "[0, inf)")  # T_L, the fixed intermediate step (D3SR Eq. 1)
    # a strength control: the one step's timestep at strength 0 and at strength 1 (None: always T_L)
    strength_timesteps: tuple[int, int] | None = ranged(None, "[0, inf)")
    default_strength: float = ranged(0.0, "[0, 1]")  # used when no strength is asked for
    prompt_embedding: Literal["fixed", "learnable"] = "fixed"  # D3SR: fixed; DFOSD: learnable
    prompt: str = ""  # encoded once with the base folder's text encoder, if it has one
    prompt_length: int = ranged(77, "[1, inf)")
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)  # None: train the whole UNet

    @classmethod
    def full(cls, **overrides: Any) -> SDGeneratorConfig:
        """SD-2.1-base architecture (random weights unless ``pretrained`` is set)."""
        return cls(unet=SD21_UNET_CONFIG, vae=SD21_VAE_CONFIG, scheduler=SD21_SCHEDULER_CONFIG, **overrides)


class SDOneStepGenerator(nn.Module):
    """UNet + autoencoder + prompt embedding; maps HR-sized LR images ([-1, 1]) to HR images."""

    def __init__(
        self,
        unet: nn.Module,
        autoencoder: nn.Module,
        schedule: DDPMSchedule,
        timestep: int,
        prompt_embedding: torch.Tensor,
        learnable_prompt: bool,
        strength_timesteps: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        for step in (timestep, *(strength_timesteps or ())):
            if not 0 <= step < schedule.num_train_timesteps:
                raise ValueError(f"timestep {step} must be in [0, {schedule.num_train_timesteps - 1}]")
        self.unet = unet
        self.autoencoder = autoencoder
        self.schedule = schedule
        self.timestep = timestep
        self.strength_timesteps = strength_timesteps
        if learnable_prompt:
            self.prompt_embedding = nn.Parameter(prompt_embedding)
        else:
            self.register_buffer("prompt_embedding", prompt_embedding)
        self.autoencoder.requires_grad_(False)

    @property
    def latent_stride(self) -> int:
        if isinstance(self.autoencoder, PixelUnshuffleAutoencoder):
            return self.autoencoder.factor
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet's and the VAE decoder's activations in backward (diffusers' checkpointing)."""
        self.unet.enable_gradient_checkpointing()
        if not isinstance(self.autoencoder, PixelUnshuffleAutoencoder):
            self.autoencoder.enable_gradient_checkpointing()

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """z = E(x) * scaling factor (the posterior mode for the KL autoencoder)."""
        if isinstance(self.autoencoder, PixelUnshuffleAutoencoder):
            return self.autoencoder.encode(image)
        return self.autoencoder.encode(image).latent_dist.mode() * self.autoencoder.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if isinstance(self.autoencoder, PixelUnshuffleAutoencoder):
            return self.autoencoder.decode(z)
        return self.autoencoder.decode(z / self.autoencoder.config.scaling_factor).sample

    def timesteps(self, batch: int, strength: torch.Tensor | float | None, device: torch.device) -> torch.Tensor:
        """The one step's timestep per image: T_L, or ``t0 + s (t1 - t0)`` rounded for strengths ``s`` in [0, 1]."""
        if strength is None:
            return torch.full((batch,), self.timestep, device=device, dtype=torch.long)
        if self.strength_timesteps is None:
            raise ValueError("this model has no strength control (trained at one timestep)")
        s = torch.as_tensor(strength, dtype=torch.float32, device=device).expand(batch)
        if bool(((s < 0) | (s > 1)).any()):
            raise ValueError(f"strength must be in [0, 1], got {s.tolist()}")
        first, last = self.strength_timesteps
        return torch.round(first + s * (last - first)).long()

    def denoise(self, z_lr: torch.Tensor, strength: torch.Tensor | float | None = None) -> torch.Tensor:
        """One UNet evaluation at T_L (or the strength's timestep), then the clean-latent estimate (D3SR Eq. 1)."""
        t = self.timesteps(z_lr.shape[0], strength, z_lr.device)
        prompt = self.prompt_embedding.to(z_lr.dtype).expand(z_lr.shape[0], -1, -1)
        model_output = self.unet(z_lr, t, encoder_hidden_states=prompt).sample
        return self.schedule.pred_x0(z_lr, model_output, t)

    def forward(
        self, x_lr_up: torch.Tensor, strength: torch.Tensor | float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (z_H, x_H) for an HR-sized LR image in [-1, 1]."""
        z_hr = self.denoise(self.encode(x_lr_up), strength)
        return z_hr, self.decode(z_hr)


def upsample_lr(lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Bicubic x``scale`` upsampling of an LR image in [0, 1] to the generator's input range [-1, 1]."""
    up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp_(0, 1).mul_(2).sub_(1)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a diffusers model folder (save_pretrained layout)")
    return json.loads(path.read_text())


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _resolve_parts(config: SDGeneratorConfig) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """UNet, VAE and scheduler configs, from the pretrained folder or from the config itself."""
    if config.pretrained is not None:
        root = Path(config.pretrained)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: base model folder not found; give a local diffusers folder")
        unet = _read_json(root / "unet" / "config.json")
        vae = _read_json(root / "vae" / "config.json") if config.autoencoder == "kl" else None
        sched_path = root / "scheduler" / "scheduler_config.json"
        scheduler = _read_json(sched_path) if sched_path.is_file() else dict(SD21_SCHEDULER_CONFIG)
        return unet, vae, scheduler
    if config.unet is None:
        raise ValueError("generator config needs either 'pretrained' (a local SD folder) or an explicit 'unet'")
    if config.autoencoder == "kl" and config.vae is None:
        raise ValueError("generator config with autoencoder 'kl' needs 'pretrained' or an explicit 'vae'")
    return dict(config.unet), config.vae, dict(config.scheduler or SD21_SCHEDULER_CONFIG)


def _prompt_embedding(config: SDGeneratorConfig, cross_attention_dim: int) -> torch.Tensor:
    """The prompt's text-encoder embedding when the base folder has an encoder, else zeros."""
    root = Path(config.pretrained) if config.pretrained else None
    if root is not None and (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir():
        from transformers import AutoTokenizer, CLIPTextModel

        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True)
        tokens = tokenizer(
            config.prompt, padding="max_length", max_length=config.prompt_length, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            return encoder(tokens.input_ids)[0].float()
    if root is not None:  # a model folder without a base brings its trained embedding: nothing to say
        logger.info("no text encoder in the base folder: prompt embedding starts at zeros")
    return torch.zeros(1, config.prompt_length, cross_attention_dim)


def lora_targets(module: nn.Module, lora: LoRAConfig) -> list[str]:
    """The configured LoRA target names that name at least one sub-module of ``module``."""
    names = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    full_names = {name for name, _ in module.named_modules()}
    targets = [t for t in lora.target_modules if t in names or any(n.endswith("." + t) for n in full_names)]
    if not targets:
        raise ValueError(f"LoRA target modules {list(lora.target_modules)} match no module of the UNet")
    return targets


def add_lora(unet: nn.Module, lora: LoRAConfig) -> None:
    """Freeze the UNet and inject LoRA adapters (peft) on the configured target modules."""
    from peft import LoraConfig

    targets = lora_targets(unet, lora)
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=targets, init_lora_weights="gaussian")
    )


def build_sd_generator(
    config: SDGeneratorConfig,
    device: torch.device | str | None = None,
    prompt_embedding: torch.Tensor | None = None,
    frozen_dtype: torch.dtype | None = None,
) -> SDOneStepGenerator:
    """Build the generator: pretrained weights from a local folder, or a random init of the given configs.

    ``prompt_embedding``: a stored embedding (a trained model's), used as it is: the text encoder is not
    run. On ``device="meta"`` nothing is allocated (used for complexity reports of the full size).
    ``frozen_dtype`` (mixed-precision training): the frozen pretrained networks (the VAE; the UNet under
    LoRA) are read from their files in this dtype, with no float32 copy first; their LoRA adapters come in
    that dtype too (peft follows the base layer) until the trainer's placement puts them in float32.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg, vae_cfg, sched_cfg = _resolve_parts(config)
    meta = device is not None and torch.device(device).type == "meta"
    if config.pretrained is not None and not meta:
        root = Path(config.pretrained)
        unet_dtype = frozen_dtype if config.lora is not None else None  # a UNet without LoRA trains whole
        unet = UNet2DConditionModel.from_pretrained(root / "unet", local_files_only=True, torch_dtype=unet_dtype)
        vae = (
            AutoencoderKL.from_pretrained(root / "vae", local_files_only=True, torch_dtype=frozen_dtype)
            if vae_cfg is not None
            else None
        )
    else:
        with torch.device(device or "cpu"):
            unet = UNet2DConditionModel(**_architecture(unet_cfg))
            vae = AutoencoderKL(**_architecture(vae_cfg)) if vae_cfg is not None else None
    autoencoder: nn.Module = vae if vae is not None else PixelUnshuffleAutoencoder(factor=config.unshuffle_factor)
    if config.lora is not None:
        with torch.device(device or "cpu"):
            add_lora(unet, config.lora)
    cross_dim = unet.config.cross_attention_dim
    if meta:
        prompt = torch.zeros(1, config.prompt_length, cross_dim, device="meta")
    elif prompt_embedding is not None:
        prompt = prompt_embedding.clone()
    else:
        prompt = _prompt_embedding(config, cross_dim)
    generator = SDOneStepGenerator(
        unet,
        autoencoder,
        DDPMSchedule(sched_cfg),
        config.timestep,
        prompt,
        learnable_prompt=config.prompt_embedding == "learnable",
        strength_timesteps=config.strength_timesteps,
    )
    return generator.to(device) if device is not None and not meta else generator


def trainable_state_dict(generator: SDOneStepGenerator) -> dict[str, torch.Tensor]:
    """The trained part: LoRA weights + prompt embedding (or the whole UNet when it has no LoRA)."""
    names = {n for n, p in generator.named_parameters() if p.requires_grad}
    state = {k: v for k, v in generator.state_dict().items() if k in names or k == "prompt_embedding"}
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_sd_model(
    generator: SDOneStepGenerator, config: SDGeneratorConfig, path: str | Path, model_type: str = "sd-onestep"
) -> Path:
    """Write a model folder (no LoRA) or a single LoRA file (``path`` ending in .safetensors)."""
    from osdsr.weights_io import atomic_write_json, atomic_write_safetensors

    if model_type not in SD_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {SD_MODEL_TYPES}")
    meta = {"model_type": model_type, "generator": to_dict(config)}
    path = Path(path)
    if config.lora is not None:
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: a LoRA generator is saved as one .safetensors file")
        meta["format"] = LORA_FILE_FORMAT
        atomic_write_safetensors(trainable_state_dict(generator), path, {"osdsr_config": json.dumps(meta)})
        return path
    path.mkdir(parents=True, exist_ok=True)
    unet_cfg, vae_cfg, sched_cfg = _resolve_parts(config)
    full_cfg = dataclasses.replace(config, pretrained=None, unet=_architecture(unet_cfg), vae=vae_cfg, scheduler=sched_cfg)
    meta["generator"] = to_dict(full_cfg)
    state = {k: v.detach().contiguous() for k, v in generator.state_dict().items()}
    atomic_write_safetensors(state, path / "model.safetensors", {})
    atomic_write_json(meta, path / "config.json")
    return path


def load_sd_generator(path: str | Path, pretrained: str | Path | None = None) -> tuple[SDOneStepGenerator, dict]:
    """Load a model folder or a LoRA file (on top of ``pretrained``); returns (generator, metadata)."""
    from osdsr.weights_io import read_safetensors

    path = Path(path)
    if path.is_dir():
        meta = _read_json(path / "config.json")
        state, _ = read_safetensors(path / "model.safetensors")
        config = from_dict(SDGeneratorConfig, meta["generator"], "generator")
    else:
        state, header = read_safetensors(path)
        if "osdsr_config" not in header:
            raise ValueError(f"{path}: not an osdsr LoRA file (no osdsr_config metadata)")
        meta = json.loads(header["osdsr_config"])
        config = from_dict(SDGeneratorConfig, meta["generator"], "generator")
        base = pretrained if pretrained is not None else config.pretrained
        if base is None:
            raise ValueError(f"{path}: a LoRA file needs the base SD model: pass --pretrained DIR")
        config = dataclasses.replace(config, pretrained=str(base))
    if meta.get("model_type") not in SD_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {meta.get('model_type')!r} is not an SD one-step model")
    native = _native_generator(config) if path.is_dir() else None
    # the stored prompt embedding is loaded below: the text encoder is not run
    generator = native if native is not None else build_sd_generator(config, prompt_embedding=state.get("prompt_embedding"))
    strict = path.is_dir()
    try:  # the native generator is on meta: it takes the loaded tensors as they are (assign)
        missing, unexpected = generator.load_state_dict(state, strict=False, assign=native is not None)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path}: weights do not match the config ({str(exc).strip().splitlines()[-1].strip()})") from None
    if unexpected or (strict and missing) or (not strict and set(state) - set(generator.state_dict())):
        raise ValueError(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return generator, meta


def _native_generator(config: SDGeneratorConfig) -> SDOneStepGenerator | None:
    """The generator on ``meta`` with the diffusers-free UNet, when that implements the config (else None)."""
    unet_cfg, _, sched_cfg = _resolve_parts(config)
    native = native_unet_config(unet_cfg)
    if native is None or config.lora is not None or config.autoencoder != "pixel_unshuffle":
        return None
    with torch.device("meta"):
        unet = SDUNet(native)
        prompt = torch.zeros(1, config.prompt_length, native.cross_attention_dim)
    return SDOneStepGenerator(
        unet,
        PixelUnshuffleAutoencoder(factor=config.unshuffle_factor),
        DDPMSchedule(sched_cfg),
        config.timestep,
        prompt,
        learnable_prompt=config.prompt_embedding == "learnable",
        strength_timesteps=config.strength_timesteps,
    )


def merge_lora(generator: SDOneStepGenerator) -> None:
    """Fold LoRA deltas into the base weights (inference only: faster, same outputs)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in generator.unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()


class SDSRModel(nn.Module):
    """The SR-model contract (``osdsr.models.sr_model``) around an ``SDOneStepGenerator``."""

    scale = SCALE
    noise_channels = 0

    def __init__(self, generator: SDOneStepGenerator, strength: float | None = None) -> None:
        """``strength``: where the strength control stands (models that have one; None: T_L)."""
        super().__init__()
        self.generator = generator
        self.latent_stride = generator.latent_stride
        self.lr_multiple = max(1, self.latent_stride // SCALE)
        self.strength = strength

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return self.generator.encode(upsample_lr(lr))

    def denoise(self, condition: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self.generator.denoise(condition, self.strength)

    def decode(self, z_hr: torch.Tensor) -> torch.Tensor:
        return (self.generator.decode(z_hr) + 1).mul_(0.5).clamp_(0, 1)  # (x + 1) / 2 in one buffer


def load_sd_sr_model(path: Path, options: Any) -> SDSRModel:
    """Loader for ``osdsr.model_loading``: model folder or LoRA file -> merged, eval-mode SR model."""
    generator, meta = load_sd_generator(path, getattr(options, "pretrained", None))
    if meta["generator"].get("lora") is not None:
        merge_lora(generator)
    strength = None
    if generator.strength_timesteps is not None:
        strength = meta["generator"].get("default_strength", 0.0) if options.strength is None else options.strength
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength {strength}: must be in [0, 1] (0 = fidelity, 1 = the most detail)")
    model = SDSRModel(generator, strength).eval().requires_grad_(False)
    if isinstance(generator.autoencoder, PixelUnshuffleAutoencoder):  # latents in the UNet's layout: same values
        generator.autoencoder.channels_last_latents = True
    # channels-last convolutions are ~20% faster on CPU (oneDNN); same results up to float rounding
    return model.to(device=options.device, dtype=options.dtype, memory_format=torch.channels_last)



def sd_complexity_parts(
    size: int, config: SDGeneratorConfig | None = None
) -> dict[str, tuple[nn.Module, Callable[[], tuple[torch.Tensor, ...]]]]:
    """The generator's parts on ``meta`` with input builders, for ``osdsr complexity`` (output size ``size``)."""
    config = config or SDGeneratorConfig.full()
    generator = build_sd_generator(config, device="meta")
    stride = generator.latent_stride
    z_channels = generator.unet.config.in_channels

    def image() -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, 3, size, size, device="meta"),)

    def latent() -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, z_channels, size // stride, size // stride, device="meta"),)

    from osdsr.complexity import ComplexityPart

    # Parameters are reported per part: each part owns only its own sub-network.
    return {
        "vae_encoder": (ComplexityPart(generator.encode, _encoder_modules(generator)), image),
        "unet": (ComplexityPart(generator.denoise, [generator.unet]), latent),
        "vae_decoder": (ComplexityPart(generator.decode, _decoder_modules(generator)), latent),
    }


def _encoder_modules(generator: SDOneStepGenerator) -> list[nn.Module]:
    ae = generator.autoencoder
    return [ae.encoder, ae.quant_conv] if hasattr(ae, "encoder") and ae.quant_conv is not None else [ae]


def _decoder_modules(generator: SDOneStepGenerator) -> list[nn.Module]:
    ae = generator.autoencoder
    return [ae.decoder, ae.post_quant_conv] if hasattr(ae, "decoder") and ae.post_quant_conv is not None else [ae]

