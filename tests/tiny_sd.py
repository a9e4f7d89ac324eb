"""Tiny diffusers UNet / VAE configs shaped like SD-2.1 and SDXL, shared by the tests that build local folders."""

from __future__ import annotations

from typing import Any

from osdsr.models.sd_generator import SD21_VAE_CONFIG

# SD-2.1-shaped, a few thousand parameters: cross-attention down/up blocks, f8 KL autoencoder
TINY_SD_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_dim": 16,
    "use_linear_projection": True,
    "norm_num_groups": 8,
}
TINY_SD_VAE: dict[str, Any] = {  # SD-2.1's VAE config, narrowed
    **SD21_VAE_CONFIG,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 32,
}
TINY_SDXL_UNET: dict[str, Any] = {
    **TINY_SD_UNET,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 24,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 4,
    "transformer_layers_per_block": [1, 2],
    "projection_class_embeddings_input_dim": 8 + 6 * 4,  # pooled text (8) + six size/crop ids
}
