"""Upper bounds on the success of reconstruction attacks under differential privacy, from the hypothesis-testing
view of DP.

A mechanism M is f-DP (Dong, Roth & Su 2022, "Gaussian differential privacy", JRSS-B) when every test between
M(D) and M(D') for neighbouring D, D' has type-II error at least f(type-I error); f is its trade-off function.
An attack "succeeds" on an event S of the output; against the dataset without the target, S has probability κ, the
baseline success. Testing "target in" against "target out" by rejecting when S happens has type-I error κ and
type-II error 1 - P_in(S), so P_in(S) <= 1 - f(κ). This is the reconstruction bound of Hayes, Mahloujifar & Balle
2023 ("Bounding training data reconstruction in DP-SGD", NeurIPS) and Kaissis et al. 2023 ("Bounding data
reconstruction attacks with the hypothesis testing interpretation of differential privacy"), applied to realistic
baselines by Ziller et al. 2024 ("Reconciling privacy and accuracy in AI for medical imaging", Nat. Mach. Intell.).

Trade-off functions here:

* μ-GDP: G_μ(α) = Φ(Φ^{-1}(1 - α) - μ) (Dong et al., Def. 2.7);
* (ε, δ)-DP: f_{ε,δ}(α) = max(0, 1 - δ - e^ε α, e^{-ε} (1 - δ - α)) (Dong et al., Eq. 5; Kairouz et al. 2015);
* DP-SGD (T compositions of the Poisson-subsampled Gaussian with rate q and noise multiplier σ): no closed form.
  Any mechanism is f-DP with f = sup over its privacy profile of f_{ε,δ(ε)} (Dong et al., Prop. 2.12), so the
  bound takes the sup over a grid of (ε_upper(δ), δ) pairs from Opacus' PRV accountant (Gopi et al. 2021), whose
  ε_upper is a certified upper bound for each δ. Every pair is a valid guarantee, so the result is a valid upper
  bound; the grid and the accountant's ε error make it conservative, and :func:`dpsgd_bound` reports the gap to
  the same sup taken with the accountant's ε *estimates* as its numerical error. The central-limit μ of Bu et
  al. 2020, μ = q sqrt(T (e^{1/σ²} - 1)), is reported beside it as an approximation, not a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from ..errors import DiffauditError
from ..extras import require


def _check_kappa(kappa: float) -> None:
    if not 0 < kappa < 1:
        raise DiffauditError(f"the baseline success kappa must be in (0, 1), got {kappa}")


def _check_eps_delta(eps: float, delta: float) -> None:
    if not (eps > 0 and math.isfinite(eps)):
        raise DiffauditError(f"epsilon must be a positive finite number, got {eps}")
    if not 0 < delta < 1:
        raise DiffauditError(f"delta must be in (0, 1), got {delta}")


def gdp_tradeoff(alpha: float | np.ndarray, mu: float) -> np.ndarray:
    """G_μ(α) = Φ(Φ^{-1}(1 - α) - μ)."""
    if not (mu >= 0 and math.isfinite(mu)):  # also refuses nan, for which every comparison is false
        raise DiffauditError(f"mu must be a non-negative finite number, got {mu}")
    return norm.cdf(norm.ppf(1 - np.asarray(alpha, dtype=np.float64)) - mu)


def eps_delta_tradeoff(alpha: float | np.ndarray, eps: float, delta: float) -> np.ndarray:
    """f_{ε,δ}(α) = max(0, 1 - δ - e^ε α, e^{-ε}(1 - δ - α))."""
    a = np.asarray(alpha, dtype=np.float64)
    return np.maximum(0.0, np.maximum(1 - delta - math.exp(eps) * a, math.exp(-eps) * (1 - delta - a)))


def gdp_bound(kappa: float, mu: float) -> float:
    """Reconstruction success bound 1 - G_μ(κ) of a μ-GDP mechanism.

    >>> round(gdp_bound(0.01, 0.0), 6), round(gdp_bound(0.01, 1.0), 4)
    (0.01, 0.0924)
    """
    _check_kappa(kappa)
    return float(1 - gdp_tradeoff(kappa, mu))


def eps_delta_bound(kappa: float, eps: float, delta: float) -> float:
    """Reconstruction success bound 1 - f_{ε,δ}(κ) of an (ε, δ)-DP mechanism: min(1, δ + e^ε κ, ...).

    >>> round(eps_delta_bound(0.01, 1.0, 1e-5), 5)
    0.02719
    """
    _check_kappa(kappa)
    _check_eps_delta(eps, delta)
    return float(1 - eps_delta_tradeoff(kappa, eps, delta))


def clt_mu(sample_rate: float, noise_multiplier: float, steps: int) -> float:
    """The central-limit μ of DP-SGD with Poisson sampling (Bu et al. 2020): q sqrt(T (e^{1/σ²} - 1))."""
    _check_dpsgd(sample_rate, noise_multiplier, steps)
    return sample_rate * math.sqrt(steps * math.expm1(noise_multiplier ** -2))


def _check_dpsgd(sample_rate: float, noise_multiplier: float, steps: int) -> None:
    if not 0 < sample_rate <= 1:
        raise DiffauditError(f"the sampling rate q must be in (0, 1], got {sample_rate}")
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise DiffauditError(f"the noise multiplier must be a positive finite number, got {noise_multiplier}")
    if steps < 1:
        raise DiffauditError(f"DP-SGD needs at least one step, got {steps}")


@dataclass(frozen=True)
class DPSGDBound:
    bound: float  # the certified upper bound on reconstruction success
    estimate: float  # the same sup over the accountant's ε estimates (not certified)
    numerical_error: float  # bound - estimate: what the accountant's ε error and the δ grid cost
    clt_mu: float  # the central-limit μ (approximation)
    clt_bound: float  # 1 - G_{clt_mu}(κ) (approximation, often optimistic)
    pairs: int  # (ε, δ) pairs in the sup


def privacy_profile(sample_rate: float, noise_multiplier: float, steps: int, *, deltas: np.ndarray | None = None,
                    eps_error: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(δ, ε estimate, certified ε upper bound) of DP-SGD on a grid of δ, from Opacus' PRV accountant."""
    require("opacus", "the DP-SGD bound")
    from opacus.accountants import PRVAccountant

    _check_dpsgd(sample_rate, noise_multiplier, steps)
    deltas = np.logspace(-10, math.log10(0.5), 61) if deltas is None else np.asarray(deltas, dtype=np.float64)
    accountant = PRVAccountant()
    accountant.history = [(noise_multiplier, sample_rate, int(steps))]
    smallest = float(deltas.min())
    dprv = accountant._get_dprv(eps_error=eps_error, delta_error=smallest / 1000)  # one discretisation for all δ
    est, upper = [], []
    for d in deltas:
        _, e_est, e_up = dprv.compute_epsilon(float(d), smallest / 1000, eps_error)
        est.append(max(float(e_est), 0.0))
        upper.append(max(float(e_up), 0.0))
    return deltas, np.array(est), np.array(upper)


def dpsgd_bound(kappa: float, sample_rate: float, noise_multiplier: float, steps: int, *,
                eps_error: float = 0.01) -> DPSGDBound:
    """Reconstruction success bound of DP-SGD with Poisson rate q, noise multiplier σ and T steps (module docstring)."""
    _check_kappa(kappa)
    deltas, est, upper = privacy_profile(sample_rate, noise_multiplier, steps, eps_error=eps_error)

    def sup_bound(eps: np.ndarray) -> float:
        f = max(float(eps_delta_tradeoff(kappa, float(e), float(d))) for e, d in zip(eps, deltas, strict=True))
        return min(1.0, 1.0 - f)

    bound, estimate = sup_bound(upper), sup_bound(est)
    mu = clt_mu(sample_rate, noise_multiplier, steps)
    return DPSGDBound(bound=bound, estimate=estimate, numerical_error=bound - estimate, clt_mu=mu,
                      clt_bound=gdp_bound(kappa, mu), pairs=len(deltas))
