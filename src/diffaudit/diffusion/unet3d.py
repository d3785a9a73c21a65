"""The score network for volumes: MONAI's ``DiffusionModelUNet`` with ``spatial_dims=3``, trained as the continuous
sub-VP SDE's noise (or v) predictor, exactly as the 2D U-Net is.

**Why this pairing.** The audit's measures are defined on the continuous SDE: t' diffuses x_p partway and denoises
it back, the NLL integrates the probability-flow ODE, and the exact memoriser (the tests' ground truth) is the score
of the SDE's marginals. A MONAI DDPM would need all of them restated for a discrete chain, and would no longer be the
paper's model. The network, though, is MONAI's: diffusers has no volumetric U-Net (its ``UNet3DConditionModel`` is a
video model, 2D convolutions with temporal layers), and MONAI's is the U-Net of its 3D latent diffusion tutorials and
of the UK Biobank brain model, with 3D convolutions, attention and class embeddings, which a researcher who trains
MONAI models knows and can load with MONAI alone. It takes the continuous time as ``t * 999`` (its sinusoidal
embedding takes any real timestep), as the 2D U-Net does.

**Shape.** The levels are the config's as listed (``block_out_channels``, one residual block per level times
``layers_per_block``, attention where ``attention_levels`` says; MONAI puts attention in the middle block always).
``patch`` p runs the network on the volume's p x p x p patches stacked as channels ([C, D, H, W] enters as
[C p^3, D/p, H/p, W/p]), the 3D form of the 2D patching: "auto" takes the smallest power of two that brings the
largest side to at most :data:`PATCH_SIDE` voxels, but never packs more values into a position than the first level
has channels (C p^3 <= ``block_out_channels[0]``): the last level must give back every voxel's noise, and a 16-channel
level cannot carry the 64 values of a 4^3 patch (such networks, of 16 and of 32 channels, trained 2500 steps on 16
IXI volumes and still left the noise of small t untouched; at 2 x 2 x 2 the same training removes part of it: at
t = 0.1 an RMSE of 0.036 against the 0.055 of the noisy input). So the ``cpu`` network (16, 32, 32) runs 32^3 on a
16^3 grid (0.38 s per training step of 16 volumes on 2 CPU cores; ``benchmarks/volume_model.py``), and a network of
64 channels and up takes 4^3 patches (64^3 on a 16^3 grid). Every level but the last halves the grid, so each
patched side must be divisible by 2^(levels - 1); a shape that is not is refused, naming one that is.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import ModelConfig
from ..errors import DiffauditError
from ..extras import require

PATCH_SIDE = 16  # patch "auto": the largest patched side at most this, as far as the channels allow


def auto_patch(shape: tuple[int, int, int], *, channels: int = 1, width: int = 16) -> int:
    """The patch side of ``patch="auto"`` for ``channels``-channel volumes of ``shape`` (D, H, W) and a first level of
    ``width`` channels (module docstring), halved until it divides every side.

    >>> [auto_patch(s) for s in ((16, 16, 16), (32, 32, 32), (64, 64, 64), (96, 96, 64), (30, 30, 30))]
    [1, 2, 2, 2, 2]
    >>> auto_patch((64, 64, 64), width=64), auto_patch((32, 32, 32), width=64)
    (4, 2)
    """
    p = 1
    while max(shape) / p > PATCH_SIDE and channels * (2 * p) ** 3 <= width:
        p *= 2
    while any(s % p for s in shape):
        p //= 2
    return p


def patch_of(cfg: ModelConfig, shape: tuple[int, int, int], channels: int = 1) -> int:
    if cfg.patch == "auto":
        return auto_patch(shape, channels=channels, width=cfg.block_out_channels[0])
    return int(cfg.patch)


def _fits(cfg: ModelConfig, shape: tuple[int, int, int], channels: int) -> bool:
    p, k = patch_of(cfg, shape, channels), 2 ** (len(cfg.block_out_channels) - 1)
    return all(s % p == 0 and (s // p) % k == 0 and s // p >= k for s in shape)


def check_shape(cfg: ModelConfig, shape: tuple[int, int, int], channels: int = 1) -> None:
    """Refuse (one line, naming a shape that works) a volume the network of ``cfg`` cannot patch and halve."""
    if _fits(cfg, shape, channels):
        return
    p, levels = patch_of(cfg, shape, channels), len(cfg.block_out_channels)
    step = p * 2 ** (levels - 1)
    good = ",".join(str(max(step, round(s / step) * step)) for s in shape)
    raise DiffauditError(f"a {levels}-level 3D U-Net on {p} x {p} x {p} patches (model.patch) needs every side divisible "
                         f"by {step}, got {'x'.join(map(str, shape))}; prepare the volumes at --size {good}")


def model_config_for(cfg: ModelConfig, shape: tuple[int, int, int], channels: int = 1) -> ModelConfig:
    """``cfg`` with its patch side resolved for ``channels``-channel volumes of ``shape``; refuses a shape it cannot
    take."""
    check_shape(cfg, shape, channels)
    p = patch_of(cfg, shape, channels)
    return cfg if cfg.patch == p else dataclasses.replace(cfg, patch=p)


def unshuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, D, H, W] -> [B, C p^3, D/p, H/p, W/p]: each p^3 patch as channels (``pixel_unshuffle`` in 3D)."""
    if p == 1:
        return x
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // p, p, h // p, p, w // p, p).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * p**3, d // p, h // p, w // p)


def shuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of :func:`unshuffle`."""
    if p == 1:
        return x
    b, cp, d, h, w = x.shape
    c = cp // p**3
    x = x.reshape(b, c, p, p, p, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, d * p, h * p, w * p)


def monai_args(cfg: ModelConfig, channels: int) -> dict:
    """The keyword arguments of MONAI's ``DiffusionModelUNet`` for the resolved ``cfg`` (what ``monai.json`` lists)."""
    p = int(cfg.patch)
    return {"spatial_dims": 3, "in_channels": channels * p**3, "out_channels": channels * p**3,
            "channels": list(cfg.block_out_channels), "attention_levels": list(cfg.attention_levels),
            "num_res_blocks": cfg.layers_per_block, "norm_num_groups": cfg.norm_num_groups,
            "num_head_channels": list(cfg.block_out_channels),  # one head of full width, as the 2D U-Net
            "num_class_embeds": cfg.num_classes or None}


class VolumeUNet(torch.nn.Module):
    """MONAI's 3D ``DiffusionModelUNet`` on [C, D, H, W] volumes, run on their ``patch``^3 patches as channels. Its
    state dict is the MONAI network's (under ``net.``), so MONAI alone loads the weights of ``monai.json``."""

    def __init__(self, net: torch.nn.Module, patch: int) -> None:
        super().__init__()
        self.net, self.patch = net, patch

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None):
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(len(x)).to(x.dtype)
        return shuffle(self.net(unshuffle(x, self.patch), t, class_labels=class_labels), self.patch)


def build_unet3d(cfg: ModelConfig, *, channels: int, shape: tuple[int, int, int]) -> VolumeUNet:
    """The volume score network for [channels, *shape] volumes of :func:`model_config_for` (cfg, shape)."""
    require("monai", "a 3D score model (MONAI's DiffusionModelUNet)")
    require("einops", "MONAI's DiffusionModelUNet")
    from monai.networks.nets import DiffusionModelUNet

    cfg = model_config_for(cfg, shape, channels)
    return VolumeUNet(DiffusionModelUNet(**monai_args(cfg, channels)), int(cfg.patch))
