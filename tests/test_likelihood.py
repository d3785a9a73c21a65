"""Exact NLL by the probability-flow ODE against closed forms: continuous Gaussians (exact and Hutchinson
divergence) and the discrete mass of a quantised Gaussian (the dequantisation bound)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffaudit.audit.quality.likelihood import bits_per_dim, log_likelihood, rademacher
from diffaudit.diffusion.sde import SubVPSDE, VPSDE
from diffaudit.diffusion.score import gaussian_score
from diffaudit.errors import DiffauditError


def _gaussian_logpdf(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    d = x[0].numel()
    return (-0.5 * d * math.log(2 * math.pi * std**2) - (x - mean).flatten(1).pow(2).sum(1) / (2 * std**2)).double().numpy()


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_exact_divergence_gives_the_gaussian_log_density(sde):
    torch.manual_seed(0)
    mean, std = 0.1, 0.3
    x = mean + std * torch.randn(6, 1, 4, 4)
    logp, nfe = log_likelihood(gaussian_score(sde, mean, std), sde, x)
    err = np.abs(logp - _gaussian_logpdf(x, mean, std))
    assert err.max() < 5e-3, err  # nats per 16-dimensional image (3e-4 per dimension)
    assert 20 < nfe < 1000


def _correlated_gaussian(sde, cov: torch.Tensor):
    """Exact score of data N(0, cov) (cov over the flattened image): p_t = N(0, alpha^2 cov + sigma^2 I)."""

    def score_fn(x, t):
        a, s = sde.coefficients(t)
        eye = torch.eye(len(cov), dtype=torch.float64)
        prec = torch.linalg.inv(a.double()[:, None, None] ** 2 * cov + s.double()[:, None, None] ** 2 * eye)
        return -torch.einsum("bij,bj->bi", prec, x.flatten(1).double()).reshape_as(x).to(x.dtype)

    return score_fn


def test_hutchinson_is_unbiased_where_it_is_not_exact():
    sde = SubVPSDE()
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.3
    cov = a @ a.T + 0.05 * torch.eye(8, dtype=torch.float64)
    n = 48
    x = (torch.linalg.cholesky(cov) @ torch.randn(8, n, generator=g, dtype=torch.float64)).T.reshape(n, 1, 2, 4).float()
    true = torch.distributions.MultivariateNormal(torch.zeros(8, dtype=torch.float64), cov).log_prob(x.flatten(1).double())
    score = _correlated_gaussian(sde, cov)
    exact, _ = log_likelihood(score, sde, x)
    hutch, _ = log_likelihood(score, sde, x, probe=rademacher((1, 2, 4), range(n), seed=3))
    assert np.abs(exact - true.numpy()).max() < 2e-3
    diff = hutch - true.numpy()
    assert np.abs(diff).max() > 1e-2  # off-diagonal Jacobian: single draws really are noisy here ...
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(n)  # ... and unbiased


def test_bits_per_dim_bounds_the_discrete_mass_of_a_quantised_gaussian():
    sde = SubVPSDE()
    mean, std, draws = 0.0, 0.2, 24
    rng = np.random.default_rng(0)
    z = rng.normal(mean, std, size=(2, 1, 4, 4))
    k = np.clip(np.rint((z + 1) * 127.5), 0, 255).astype(np.uint8)
    centre = k.astype(np.float64) / 127.5 - 1
    mass = norm.cdf((centre + 1 / 255 - mean) / std) - norm.cdf((centre - 1 / 255 - mean) / std)
    true_bpd = -np.log2(mass).reshape(2, -1).sum(1) / 16
    # each value uses one dequantisation draw; the bound holds for their expectation, so average many draws
    bpd, _ = bits_per_dim(gaussian_score(sde, mean, std), sde, np.repeat(k, draws, 0), exact_divergence=True,
                          batch_size=draws * 2)
    per_image = bpd.reshape(2, draws)
    sem = per_image.std(1, ddof=1) / math.sqrt(draws)
    assert np.all(per_image.mean(1) > true_bpd - 3 * sem - 1e-3)  # a bound (up to Monte Carlo and solver error) ...
    assert np.all(per_image.mean(1) - true_bpd < 0.01)  # ... and a tight one when the density is smooth on the cells


def test_each_image_has_its_own_stream_whatever_the_batch():
    sde = SubVPSDE()
    k = np.random.default_rng(1).integers(60, 200, size=(3, 1, 2, 2), dtype=np.uint8)
    score = gaussian_score(sde, 0.0, 0.5)
    together, _ = bits_per_dim(score, sde, k, indices=[5, 6, 7], seed=2, batch_size=3)
    alone, _ = bits_per_dim(score, sde, k[1:2], indices=[6], seed=2, batch_size=1)
    assert alone[0] == pytest.approx(together[1], abs=1e-4)


def test_bad_input():
    sde = SubVPSDE()
    with pytest.raises(DiffauditError, match="uint8"):
        bits_per_dim(gaussian_score(sde, 0.0, 0.5), sde, np.zeros((2, 1, 2, 2), np.float32))
    with pytest.raises(DiffauditError, match=r"\[B, C, H, W\]"):
        log_likelihood(gaussian_score(sde, 0.0, 0.5), sde, torch.zeros(2, 4))
    with pytest.raises(DiffauditError, match="eps"):
        log_likelihood(gaussian_score(sde, 0.0, 0.5), sde, torch.zeros(1, 1, 2, 2), eps=0.0)

