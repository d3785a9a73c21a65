"""Reconstruction bounds under DP against independent computations and their required properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from diffaudit.errors import DiffauditError
from diffaudit.privacy.bounds import clt_mu, dpsgd_bound, eps_delta_bound, gdp_bound


def test_gdp_bound_against_the_neyman_pearson_test_of_two_gaussians():
    # mu-GDP is exactly the trade-off of testing N(0,1) against N(mu,1): reject when x > c with type-I error kappa;
    # the power of that test is the largest success probability at baseline kappa
    for kappa in (0.001, 0.05, 0.3):
        for mu in (0.1, 1.0, 3.0):
            c = norm.isf(kappa)
            power = norm.sf(c - mu)
            assert gdp_bound(kappa, mu) == pytest.approx(power, rel=1e-12)


def test_eps_delta_bound_against_its_piecewise_form():
    for kappa in (1e-4, 0.01, 0.2, 0.6):
        for eps in (0.1, 1.0, 8.0):
            for delta in (1e-6, 1e-2):
                # 1 - f(kappa) = min(1, delta + e^eps kappa, 1 - e^-eps (1 - delta - kappa))
                want = min(1.0, delta + math.exp(eps) * kappa, 1 - math.exp(-eps) * (1 - delta - kappa))
                assert eps_delta_bound(kappa, eps, delta) == pytest.approx(want, rel=1e-12)


def test_bounds_are_monotone_and_equal_kappa_without_privacy_loss():
    kappas = np.linspace(0.01, 0.9, 12)
    for mu in (0.0, 0.5, 2.0):
        values = [gdp_bound(k, mu) for k in kappas]
        assert np.all(np.diff(values) > 0)
    assert all(gdp_bound(k, 0.0) == pytest.approx(k) for k in kappas)
    mus = [gdp_bound(0.05, m) for m in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(mus) > 0) and mus[-1] < 1
    epss = [eps_delta_bound(0.05, e, 1e-5) for e in (0.01, 0.5, 1.0, 2.0)]
    assert np.all(np.diff(epss) > 0)
    assert eps_delta_bound(0.05, 1e-12, 1e-12) == pytest.approx(0.05, abs=1e-9)


def test_dpsgd_bound_lies_between_the_clt_value_and_one():
    q, sigma, steps, kappa = 0.01, 1.0, 1000, 0.01
    b = dpsgd_bound(kappa, q, sigma, steps)
    assert b.clt_mu == pytest.approx(clt_mu(q, sigma, steps)) == pytest.approx(q * math.sqrt(steps * math.expm1(1)))
    assert b.clt_bound <= b.bound <= 1.0
    assert 0 <= b.numerical_error < 0.02 and b.estimate <= b.bound
    more_noise = dpsgd_bound(kappa, q, 2.0, steps)
    assert kappa < more_noise.bound < b.bound  # more noise, less success; never below the baseline


def test_dpsgd_bound_agrees_with_the_epsilon_of_its_own_accountant():
    from opacus.accountants import PRVAccountant

    q, sigma, steps, kappa, delta = 0.02, 1.2, 500, 0.05, 1e-5
    acc = PRVAccountant()
    acc.history = [(sigma, q, steps)]
    eps = acc.get_epsilon(delta)
    # the sup over the privacy profile is at least as tight as the single (eps, delta) guarantee
    assert dpsgd_bound(kappa, q, sigma, steps).bound <= eps_delta_bound(kappa, eps, delta) + 1e-9


@pytest.mark.parametrize("call, match", [
    (lambda: gdp_bound(0.0, 1.0), "kappa"), (lambda: gdp_bound(1.0, 1.0), "kappa"),
    (lambda: eps_delta_bound(0.1, 0.0, 1e-5), "epsilon"), (lambda: eps_delta_bound(0.1, -1.0, 1e-5), "epsilon"),
    (lambda: eps_delta_bound(0.1, 1.0, 0.0), "delta"), (lambda: eps_delta_bound(0.1, 1.0, 1.0), "delta"),
    (lambda: gdp_bound(0.1, -0.5), "mu"), (lambda: dpsgd_bound(0.1, 0.0, 1.0, 10), "sampling rate"),
    (lambda: dpsgd_bound(0.1, 0.1, 0.0, 10), "noise multiplier"), (lambda: dpsgd_bound(0.1, 0.1, 1.0, 0), "step"),
])
def test_bad_input(call, match):
    with pytest.raises(DiffauditError, match=match):
        call()
