"""Score functions: the trained network's, and exact ones for models whose answer is known.

:class:`ScoreModel` is the one place where a network output becomes a score. The network predicts the noise
eps in x_t = alpha_t x_0 + sigma_t eps, so s_theta(x, t) = -eps_theta(x, t) / sigma_t; with the weighting
lambda(t) = sigma_t^2 the denoising score matching loss (Eq. 4) is then the usual noise-prediction loss.

The analytic scores need no training and are the ground truths of the tests:

* :func:`gaussian_score` — data N(m, s^2 I): p_t = N(alpha_t m, (alpha_t^2 s^2 + sigma_t^2) I).
* :func:`memoriser_score` — the empirical distribution of K images, the model that has memorised its
  training set perfectly: p_t = (1/K) sum_k N(alpha_t x_k, sigma_t^2 I), whose samples are exact copies.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .sde import SDE, _expand

#: Song et al.'s continuous-time conditioning: the network sees t * 999, the scale of DDPM's 1000 steps.
TIME_SCALE = 999.0


class ScoreModel(nn.Module):
    """s_theta(x, t) = -net(x, t * 999) / sigma_t for a noise-predicting network (e.g. diffusers UNet2DModel);
    a class-conditional network also takes ``class_labels`` [B] (see :func:`with_labels`)."""

    def __init__(self, net: nn.Module, sde: SDE) -> None:
        super().__init__()
        self.net = net
        self.sde = sde

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if class_labels is None:
            eps = self.net(x, t * TIME_SCALE)
        else:
            eps = self.net(x, t * TIME_SCALE, class_labels=class_labels)
        eps = getattr(eps, "sample", eps)  # diffusers returns UNet2DOutput(sample=...)
        _, sigma_t = self.sde.coefficients(t)
        return -eps / _expand(sigma_t, x)


def with_labels(model: "ScoreModel", labels: torch.Tensor | int | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model`` as a plain score function s(x, t) of a class-conditional model: ``labels`` is one label per image
    of a batch (a tensor), or one class for batches of any size (an int); None leaves the model unconditional."""
    if labels is None:
        return model
    if isinstance(labels, torch.Tensor):
        return lambda x, t: model(x, t, class_labels=labels)
    return lambda x, t: model(x, t, class_labels=torch.full((len(x),), int(labels), device=x.device, dtype=torch.long))


def gaussian_score(sde: SDE, mean: torch.Tensor | float, std: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact score of data N(mean, std^2 I) diffused by ``sde``."""

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_t, sigma_t = sde.coefficients(t)
        var = _expand(alpha_t**2 * std**2 + sigma_t**2, x)
        return -(x - _expand(alpha_t, x) * mean) / var

    return score_fn


def memoriser_score(sde: SDE, images: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact score of the empirical distribution of ``images`` [K, C, H, W] diffused by ``sde``:

    grad log p_t(x) = sum_k w_k(x) (alpha_t x_k - x) / sigma_t^2, with w = softmax_k(-|x - alpha_t x_k|^2 / 2 sigma_t^2).
    """
    flat = images.flatten(1).to(torch.float64)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_t, sigma_t = sde.coefficients(t.to(torch.float64))
        xf = x.flatten(1).to(torch.float64)
        centres = alpha_t[:, None, None] * flat.to(x.device)[None]  # [B, K, D]
        d2 = (xf[:, None, :] - centres).pow(2).sum(-1)  # [B, K]
        w = torch.softmax(-d2 / (2 * sigma_t[:, None] ** 2), dim=1)
        target = torch.einsum("bk,bkd->bd", w, centres)
        return ((target - xf) / sigma_t[:, None] ** 2).reshape_as(x).to(x.dtype)

    return score_fn
