"""SDE marginals against closed forms, against the variance ODE, and against Monte-Carlo simulation."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffaudit.diffusion.sde import SDES, SubVPSDE, VESDE, VPSDE, make_sde, sde_from_dict
from diffaudit.errors import DiffauditError

ALL = [SubVPSDE(), VPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)]
TS = torch.tensor([1e-3, 0.05, 0.3, 0.7, 1.0], dtype=torch.float64)


def test_closed_forms_match_song_et_al():
    b0, b1 = 0.1, 20.0
    t = TS.numpy()
    B = b0 * t + 0.5 * t**2 * (b1 - b0)
    alpha, sigma = SubVPSDE().coefficients(TS)
    np.testing.assert_allclose(alpha.numpy(), np.exp(-0.5 * B), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), 1 - np.exp(-B), rtol=1e-12)  # a std, not a variance
    alpha, sigma = VPSDE().coefficients(TS)
    np.testing.assert_allclose(sigma.numpy(), np.sqrt(1 - np.exp(-B)), rtol=1e-12)
    ve = VESDE(sigma_min=0.01, sigma_max=5.0)
    _, sigma = ve.coefficients(TS)
    np.testing.assert_allclose(sigma.numpy(), np.sqrt((0.01 * 500**t) ** 2 - 0.01**2), rtol=1e-12)


@pytest.mark.parametrize("sde", ALL, ids=lambda s: s.name)
def test_kernel_solves_the_moment_odes(sde):
    """For dx = -b(t) x/2 dt + g dw: d alpha/dt = drift coefficient * alpha, d sigma^2/dt = 2 k sigma^2 + g^2."""
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64, requires_grad=True)
    alpha, sigma = sde.coefficients(t)
    d_alpha = (torch.autograd.grad(alpha.sum(), t, retain_graph=True)[0] if alpha.requires_grad
               else torch.zeros_like(t))  # VE: alpha_t = 1
    d_var = torch.autograd.grad((sigma**2).sum(), t)[0]
    one = torch.ones(len(t), 1, dtype=torch.float64)
    drift, g = sde.sde(one, t.detach())
    k = drift[:, 0]  # the drift is linear: f(x, t) = k(t) x
    np.testing.assert_allclose(d_alpha.numpy(), (k * alpha).detach().numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(d_var.numpy(), (2 * k * sigma**2 + g**2).detach().numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("sde", ALL, ids=lambda s: s.name)
def test_marginals_match_monte_carlo_simulation(sde):
    """Simulate the forward SDE from x_0 = 0.8 by Euler–Maruyama; compare mean and std at several t."""
    g = torch.Generator().manual_seed(0)
    n, steps, x0 = 40_000, 1000, 0.8
    x = torch.full((n, 1), x0, dtype=torch.float64)
    dt = sde.T / steps
    checks = {250: None, 500: None, 1000: None}
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=torch.float64)
        drift, diff = sde.sde(x, t)
        x = x + drift * dt + diff[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if i + 1 in checks:
            tt = torch.tensor([(i + 1) * dt], dtype=torch.float64)
            mean, std = sde.marginal(torch.tensor([[x0]], dtype=torch.float64), tt)
            se = std.item() / math.sqrt(n)
            assert abs(x.mean().item() - mean.item()) < 5 * se + 2e-3 * max(1, std.item())
            assert x.std().item() == pytest.approx(std.item(), rel=0.02)


@pytest.mark.parametrize("sde", ALL, ids=lambda s: s.name)
def test_prior_matches_marginal_at_T_and_logp_matches_scipy(sde):
    alpha_T, sigma_T = sde.coefficients(torch.tensor([sde.T], dtype=torch.float64))
    assert sigma_T.item() == pytest.approx(sde.prior_std, rel=1e-3)
    assert alpha_T.item() < 0.01 or sde.name == "ve"
    z = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = stats.norm(0, sde.prior_std).logpdf(z.flatten(1).numpy()).sum(1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), expected, rtol=1e-10)


def test_registry_and_round_trip():
    assert set(SDES) == {"subvp", "vp", "ve"}
    sde = make_sde("subvp", beta_max=10.0)
    assert sde_from_dict(sde.to_dict()) == sde
    with pytest.raises(DiffauditError, match="unknown SDE 'vpp'"):
        make_sde("vpp")
    with pytest.raises(DiffauditError, match="no parameter"):
        make_sde("vp", sigma_max=3.0)
    with pytest.raises(DiffauditError, match="beta_min < beta_max"):
        make_sde("subvp", beta_min=5.0, beta_max=1.0)
