"""Denoising score matching (Eq. 4 of the paper; Song et al. 2021, Eq. 7)."""

from __future__ import annotations

from typing import Callable

import torch

from .sde import SDE, _expand


def dsm_loss(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sde: SDE, x0: torch.Tensor,
             t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-example loss lambda(t) |s(x_t, t) - grad log p_0t(x_t | x_0)|^2 with lambda(t) = sigma_t^2, [B].

    With x_t = alpha_t x_0 + sigma_t z, grad log p_0t(x_t | x_0) = -z / sigma_t, so the summand is
    |sigma_t s(x_t, t) + z|^2. It is averaged over pixels (Song's ``reduce_mean``), so an untrained network
    that outputs zero scores 1.0 whatever the image size."""
    x_t = sde.perturb(x0, t, noise)
    _, sigma_t = sde.coefficients(t)
    residual = _expand(sigma_t, x0) * score_fn(x_t, t) + noise
    return residual.pow(2).flatten(1).mean(1)
