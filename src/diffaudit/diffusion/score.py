"""Score functions: the trained network's, and exact ones for models whose answer is known.

:class:`ScoreModel` is the one place where a network output becomes a score. The network gives the noise eps in
x_t = alpha_t x_0 + sigma_t eps, so s_theta(x, t) = -eps_theta(x, t) / sigma_t; with the weighting
lambda(t) = sigma_t^2 the denoising score matching loss (Eq. 4) is then the usual noise-prediction loss. It gives
eps either directly (``prediction="eps"``) or as v (``prediction="v"``):

    eps_theta(x, t) = c_skip(t) x + c_out(t) F_theta(x, t),   d = alpha_t^2 s_d^2 + sigma_t^2,
    c_skip = sigma_t / d,   c_out = alpha_t s_d / sqrt(d),   s_d = 0.5 (the data's scale, as in Karras et al. 2022)

c_skip x is E[eps | x_t] for data N(0, s_d^2 I), and c_out scales the rest to unit variance, so F's target
(alpha_t s_d eps - sigma_t x_0 / s_d) / sqrt(d) is Salimans & Ho's v (exactly v for a VP SDE with s_d = 1). The loss is
still Eq. 4 on eps_theta, so its minimiser, the true score, is the same; what changes is what a small network must
learn. At high t, eps is almost x_t itself, and an eps network has to pass x_t's image mean through its GroupNorms to
the output: a tiny U-Net does not (it is 1/H^2 of the loss), so its score has no pull on the mean brightness and the
reverse SDE drifts to black or white images; here c_skip x carries it.

The analytic scores need no training and are the ground truths of the tests:

* :func:`gaussian_score` — data N(m, s^2 I): p_t = N(alpha_t m, (alpha_t^2 s^2 + sigma_t^2) I).
* :func:`memoriser_score` — the empirical distribution of K images, the model that has memorised its
  training set perfectly: p_t = (1/K) sum_k N(alpha_t x_k, sigma_t^2 I), whose samples are exact copies.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import DiffauditError
from .sde import SDE, _expand

#: Song et al.'s continuous-time conditioning: the network sees t * 999, the scale of DDPM's 1000 steps.
TIME_SCALE = 999.0


#: the data's scale in the v parameterisation (images in [-1, 1]; Karras et al. 2022's sigma_data)
SIGMA_DATA = 0.5
PREDICTIONS = ModelConfig.PREDICTIONS  # eps, v


def v_coefficients(sde: SDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the v parameterisation at times ``t``: eps = c_skip x_t + c_out v."""
    alpha_t, sigma_t = sde.coefficients(t)
    d = (alpha_t * SIGMA_DATA) ** 2 + sigma_t**2
    return sigma_t / d, alpha_t * SIGMA_DATA / d.sqrt()


class ScoreModel(nn.Module):
    """s_theta(x, t) = -eps_theta(x, t) / sigma_t, where eps_theta is ``net(x, t * 999)`` (``prediction="eps"``) or
    made from it (``"v"``, see the module docstring); ``net`` is e.g. a diffusers UNet2DModel. A class-conditional
    network also takes ``class_labels`` [B] (see :func:`with_labels`)."""

    def __init__(self, net: nn.Module, sde: SDE, *, prediction: str = "eps") -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise DiffauditError(f"unknown prediction '{prediction}'; choose one of {', '.join(PREDICTIONS)}")
        self.net = net
        self.sde = sde
        self.prediction = prediction

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if class_labels is None:
            out = self.net(x, t * TIME_SCALE)
        else:
            out = self.net(x, t * TIME_SCALE, class_labels=class_labels)
        out = getattr(out, "sample", out)  # diffusers returns UNet2DOutput(sample=...)
        if self.prediction == "v":
            c_skip, c_out = v_coefficients(self.sde, t)
            eps = _expand(c_skip, x) * x + _expand(c_out, x) * out
        else:
            eps = out
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
