"""The score network: a diffusers ``UNet2DModel`` built from a :class:`~diffaudit.config.ModelConfig`.

The network's depth follows the image size (``ModelConfig.levels`` "auto", :func:`model_config_for`): three levels
at 28 px (28, 14, 7; App. A), one more per doubling of the side, so the coarsest level stays 7-13 px wide (a power of two: 8):

    levels = 3 + max(0, floor(log2(size / 28) + 0.1))      up to 52 px: 3, 53-104: 4, 105-209: 5, 210-418: 6, ...

A new level is added at the fine end, at half the width of the level below it (never below ``norm_num_groups``):
the listed 28-px network then runs on the image halved once per added level, behind cheap full-resolution levels,
so the cost per image grows about as the pixels do over 4 per level (a convolution costs pixels x width^2: four
times the pixels at a quarter of the width^2) instead of as the pixels. The ``cpu`` network at 64 px is
(8, 16, 32, 32): 189 MFLOP per image per evaluation against 93 at 28 px (appending a level of the last width
instead, (16, 32, 32, 32), costs 494). Attention sits at the level nearest 16x16 alone (64 px: 64, 32, **16**, 8;
56 px: 56, 28, **14**, 7), where one attention layer sees 256 positions. A model of three levels (any
size up to 52 px) is the listed one, unchanged: the 28-px model is the one the config lists. Every level but the
last halves the side (diffusers' stride-2 convolution down, nearest x2 up), so the side must be divisible by
2^(levels - 1); a size that is not is refused, naming the nearest one that is.

``ModelConfig.patch`` p > 1 runs the network on the image's p x p patches stacked as channels (``pixel_unshuffle``:
a [C, S, S] image enters as [C p^2, S/p, S/p], and the output is shuffled back), the patching of DiT and of Hoogeboom
et al. 2023's "simple diffusion" for large images: the levels above then follow S/p, and the costly full-resolution
levels of few channels are gone. ``"auto"`` (the ``cpu`` preset's) takes the smallest power of two up to
:data:`MAX_AUTO_PATCH` that brings the side to at most :data:`PATCH_SIDE` px: 28 px unpatched, 64 px in 2 x 2 patches
(the ``cpu`` network's listed (16, 32, 32) on a 32-px grid: about 2.5x less time per training step than the unpatched
(8, 16, 32, 32), and it memorises the demo's 16 images within its 2500 steps; ``benchmarks/patch.py``), 128 px and
up in 4 x 4.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from ..config import ModelConfig
from ..errors import DiffauditError

BASE_SIZE = 28  # the image side of the listed (three-level) model: MedMNIST's
BASE_LEVELS = 3
ATTENTION_SIDE = 16  # an added level's attention: at the level whose side is nearest this
PATCH_SIDE = 32  # patch "auto": the network's side at most this ...
MAX_AUTO_PATCH = 4  # ... with patches of at most 4 x 4 (16 values per channel in one input position)


def auto_levels(size: int) -> int:
    """U-Net levels for ``size``-px images: 3 at 28 px, one more per doubling (the 0.1 rounds 53-55 px up).

    >>> [auto_levels(s) for s in (16, 28, 32, 48, 56, 64, 112, 128, 224, 256, 512)]
    [3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7]
    """
    return BASE_LEVELS + max(0, math.floor(math.log2(size / BASE_SIZE) + 0.1))


def auto_patch(size: int) -> int:
    """The patch side of ``patch="auto"``: the smallest power of two up to :data:`MAX_AUTO_PATCH` that brings ``size``
    to at most :data:`PATCH_SIDE` px, halved until it divides ``size``.

    >>> [auto_patch(s) for s in (28, 32, 48, 56, 64, 100, 128, 224, 256, 512)]
    [1, 1, 2, 2, 2, 4, 4, 4, 4, 4]
    """
    p = 1
    while size / p > PATCH_SIDE and p < MAX_AUTO_PATCH:
        p *= 2
    while size % p:
        p //= 2
    return p


def patch_of(cfg: ModelConfig | None, size: int) -> int:
    """The patch side the network of ``cfg`` uses on ``size``-px images (1: none)."""
    if cfg is None:
        return 1
    return auto_patch(size) if cfg.patch == "auto" else int(cfg.patch)


def level_sides(size: int, levels: int) -> list[int]:
    """The side of each level's feature maps (the image side halved at every level but the last)."""
    return [size // 2**k for k in range(levels)]


def _fits(size: int, levels: int) -> bool:
    return size >= 2 ** (levels - 1) and size % 2 ** (levels - 1) == 0


def _fits_cfg(cfg: ModelConfig | None, size: int) -> bool:
    p = patch_of(cfg, size)
    return size % p == 0 and _fits(size // p, _levels_at(cfg, size // p))


def nearest_size(size: int, cfg: ModelConfig | None = None) -> int:
    """The image side nearest ``size`` that the U-Net of ``cfg`` (its auto levels, or its fixed listed ones) can
    halve at every level (the smaller one on a tie)."""
    for d in range(size + 1):
        for s in (size - d, size + d):
            if s >= 1 and _fits_cfg(cfg, s):
                return s
    raise AssertionError("unreachable: every power of two fits")


def _levels_at(cfg: ModelConfig | None, size: int) -> int:
    if cfg is not None and cfg.levels == "fixed":
        return len(cfg.block_out_channels)
    return max(auto_levels(size), len(cfg.block_out_channels) if cfg is not None else 0)


def check_size(cfg: ModelConfig, size: int) -> None:
    """Refuse (one line, naming a size that works) an image side the U-Net of ``cfg`` cannot patch and halve at every
    level."""
    p = patch_of(cfg, size)
    if size % p:
        good = nearest_size(size, cfg)
        raise DiffauditError(f"the U-Net takes {p} x {p} patches (model.patch), so it needs a side divisible by {p}, got "
                             f"{size} px; prepare the images at {good} px (--size {good})")
    side = size // p
    levels = _levels_at(cfg, side)
    if not _fits(side, levels):
        good = nearest_size(size, cfg)
        how = "" if cfg.levels == "fixed" else " (model.levels auto: one level more per doubling of 28 px)"
        got = f"{size} px ({side} patches of {p} x {p} px, model.patch)" if p > 1 else f"{size} px"
        raise DiffauditError(f"a {levels}-level U-Net{how} halves the side {levels - 1} times, so it needs a side "
                             f"divisible by {2 ** (levels - 1)}{' patches' if p > 1 else ''}, got {got}; prepare the "
                             f"images at {good} px (--size {good})")


def model_config_for(cfg: ModelConfig, size: int) -> ModelConfig:
    """``cfg`` resolved for ``size``-px images: its patch side (``"auto"`` resolved), and with ``levels`` "auto" and
    fewer listed levels than :func:`auto_levels` asks for the patched side, the listed ones behind finer levels of half
    the width each (at least ``norm_num_groups``), attention at the level nearest 16x16 alone; otherwise ``cfg``
    itself. A resolved config resolves to itself (a saved model.json rebuilds the same network). Refuses a size the
    network cannot patch and halve at every level."""
    check_size(cfg, size)
    p = patch_of(cfg, size)
    if cfg.patch != p:
        cfg = dataclasses.replace(cfg, patch=p)
    side = size // p
    levels = _levels_at(cfg, side)
    listed = len(cfg.block_out_channels)
    if cfg.levels == "fixed" or levels <= listed:
        return cfg
    sides = level_sides(side, levels)
    attend = min(range(levels), key=lambda k: (abs(math.log2(sides[k] / ATTENTION_SIDE)), -k))
    return dataclasses.replace(
        cfg,
        block_out_channels=_finer(tuple(cfg.block_out_channels), levels - listed, cfg.norm_num_groups),
        attention_levels=tuple(k == attend for k in range(levels)),
    )


def _finer(widths: tuple[int, ...], extra: int, groups: int) -> tuple[int, ...]:
    """``widths`` behind ``extra`` finer levels, each half the width of the next (a multiple of ``groups``, at least
    ``groups``).

    >>> _finer((16, 32, 32), 1, 8), _finer((16, 32, 32), 2, 8), _finer((128, 256, 256), 2, 32)
    ((8, 16, 32, 32), (8, 8, 16, 32, 32), (32, 64, 128, 256, 256))
    """
    for _ in range(extra):
        widths = (max(groups, widths[0] // 2 // groups * groups),) + widths
    return widths


class PatchedUNet2DModel(UNet2DModel):
    """A diffusers ``UNet2DModel`` that takes and gives [C, S, S] images but runs on their ``patch`` x ``patch``
    patches stacked as channels ([C p^2, S/p, S/p]; ``pixel_unshuffle`` in, ``pixel_shuffle`` out). Its weights and
    config are the inner UNet2DModel's: ``UNet2DModel.from_pretrained`` loads them, and the caller patches."""

    patch: int = 1

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None,
                return_dict: bool = True):
        p = self.patch
        out = super().forward(F.pixel_unshuffle(sample, p), timestep, class_labels=class_labels).sample
        out = F.pixel_shuffle(out, p)
        return UNet2DOutput(sample=out) if return_dict else (out,)


def build_unet(cfg: ModelConfig, *, channels: int, size: int) -> UNet2DModel:
    """A noise-predicting U-Net for [channels, size, size] images, of :func:`model_config_for` (cfg, size);
    single-head attention where enabled; a :class:`PatchedUNet2DModel` when the resolved patch side is above 1.

    Each level but the last halves the resolution, so the (patched) side must be divisible by 2^(levels - 1):
    28x28 allows three levels (28, 14, 7), the paper's "three outermost" blocks (App. A)."""
    if len(cfg.attention_levels) != len(cfg.block_out_channels):
        raise DiffauditError(f"attention_levels has {len(cfg.attention_levels)} entries for "
                             f"{len(cfg.block_out_channels)} levels; give one per level")
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise DiffauditError(f"block_out_channels {cfg.block_out_channels} must be multiples of norm_num_groups={cfg.norm_num_groups}")
    cfg = model_config_for(cfg, size)
    p = int(cfg.patch)
    net = (PatchedUNet2DModel if p > 1 else UNet2DModel)(
        sample_size=size // p,
        in_channels=channels * p * p,
        out_channels=channels * p * p,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)),
        add_attention=cfg.mid_attention,
        attention_head_dim=None,  # one head of full width, as in DDPM/NCSN++
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=cfg.num_classes or None,
    )
    if p > 1:
        net.patch = p
    return net
