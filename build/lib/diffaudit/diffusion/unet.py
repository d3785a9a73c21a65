"""The score network: a diffusers ``UNet2DModel`` built from a :class:`~diffaudit.config.ModelConfig`."""

from __future__ import annotations

from diffusers import UNet2DModel

from ..config import ModelConfig
from ..errors import DiffauditError


def build_unet(cfg: ModelConfig, *, channels: int, size: int) -> UNet2DModel:
    """A noise-predicting U-Net for [channels, size, size] images; single-head attention where enabled.

    Each level but the last halves the resolution, so ``size`` must be divisible by 2^(levels - 1):
    28x28 allows three levels (28, 14, 7), the paper's "three outermost" blocks (App. A)."""
    levels = len(cfg.block_out_channels)
    if len(cfg.attention_levels) != levels:
        raise DiffauditError(
            f"attention_levels has {len(cfg.attention_levels)} entries for {levels} levels; give one per level"
        )
    if size % 2 ** (levels - 1):
        raise DiffauditError(f"{levels} U-Net levels need an image size divisible by {2 ** (levels - 1)}, got {size}")
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise DiffauditError(f"block_out_channels {cfg.block_out_channels} must be multiples of norm_num_groups={cfg.norm_num_groups}")
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)),
        add_attention=cfg.mid_attention,
        attention_head_dim=None,  # one head of full width, as in DDPM/NCSN++
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=cfg.num_classes or None,
    )
