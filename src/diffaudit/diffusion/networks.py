"""The score network for an audit's images, whichever their dimension: a diffusers U-Net for images [C, H, W]
(:mod:`.unet`), MONAI's 3D U-Net for volumes [C, D, H, W] (:mod:`.unet3d`). Both predict the noise (or v) of the same
continuous SDE, so everything downstream of the network is the same."""

from __future__ import annotations

from typing import Sequence

import torch

from ..config import ModelConfig
from ..errors import DiffauditError
from . import unet, unet3d
from .conditioning import attach


def is_volume(image_shape: Sequence[int]) -> bool:
    """Whether ``image_shape`` is a volume's [C, D, H, W] (else an image's [C, H, W])."""
    if len(image_shape) not in (3, 4):
        raise DiffauditError(f"an image is [C, H, W] and a volume [C, D, H, W]; got the shape {list(image_shape)}")
    return len(image_shape) == 4


def _square(image_shape: Sequence[int]) -> int:
    c, h, w = image_shape
    if h != w:
        raise DiffauditError(f"the 2D U-Net takes square images; got {h}x{w}")
    return h


def check_shape(cfg: ModelConfig, image_shape: Sequence[int]) -> None:
    """Refuse, naming a size that works, images or volumes the network of ``cfg`` cannot take."""
    if is_volume(image_shape):
        unet3d.check_shape(cfg, tuple(image_shape[1:]), int(image_shape[0]))
    else:
        unet.check_size(cfg, _square(image_shape))


def resolve(cfg: ModelConfig, image_shape: Sequence[int]) -> ModelConfig:
    """``cfg`` resolved for ``image_shape`` (patch side, and in 2D the levels), as a trained model records it."""
    if is_volume(image_shape):
        return unet3d.model_config_for(cfg, tuple(image_shape[1:]), int(image_shape[0]))
    return unet.model_config_for(cfg, _square(image_shape))


def build_network(cfg: ModelConfig, image_shape: Sequence[int]) -> torch.nn.Module:
    """The noise-predicting network of ``cfg`` for ``image_shape`` (unseeded: the caller seeds); with covariates, its
    class embedding is the attribute embedding of :mod:`.conditioning`."""
    if is_volume(image_shape):
        net = unet3d.build_unet3d(cfg, channels=int(image_shape[0]), shape=tuple(image_shape[1:]))
        inner = net.net
    else:
        net = inner = unet.build_unet(cfg, channels=int(image_shape[0]), size=_square(image_shape))
    if cfg.covariates:
        attach(inner, cfg)
    return net
