"""Is x_p flagged more often among the audited model's samples than among images without x_p? The verdict's
decision, and the smallest reproduction rate the audit could have shown (pure functions over counts; scipy.stats).

**The decision.** k of the n audited samples are flagged by every detector; k_neg of n_neg negatives are (the
samples of a control model trained without x_p, or held-out real images). Under H0 both flag at one common
false-positive rate f; reproduction is *shown* when H0 is rejected for "the audited samples flag more often":
Fisher's exact one-sided test. Conditional on the k + k_neg flags in all, the number among the audited samples is
hypergeometric, so the p-value P(X >= k), X ~ Hypergeom(n + n_neg, k + k_neg, n), needs no estimate of f and its
size is at most alpha whatever f is. It replaces the earlier rule "lower limit of the rate above the upper limit of
the negatives' rate", which compared two one-sided limits: with 0 of 156 negatives that rule could not show any
rate below 1.9%, and it had no stated error rate. Fisher's test was chosen over Barnard's and Boschloo's, which are
somewhat more powerful at small counts, because it is exact without a search over the nuisance rate f, cheap at
N = 150 000, and its rejection region can be inverted exactly for the detectable rate below; its conservatism is
measured there (the size the tests simulate is well below alpha at rates near 0).

**The rate the audit could have seen.** A reproduction rate rho makes each audited sample flagged with probability
pi(rho) = rho * s + (1 - rho) * f: a reproduction is recognised with the detectors' measured sensitivity s (their
recall on clean copies of x_p), any other image is a false alarm with probability f (here the negatives' observed
rate k_neg / n_neg, the plug-in estimate of a power analysis). The power of the test at rho is

    power(rho) = sum over k_neg of Binom(k_neg; n_neg, f) * P(Binom(n, pi(rho)) >= k*(k_neg)),

with k*(k_neg) the smallest count the test rejects at; the detectable rate is the smallest rho with power >= 80%.

>>> round(excess_p_value(5, 1024, 0, 1024), 4)     # 5 flags against none among as many control samples
0.0311
>>> round(detectable_rate(1024, 0, 1024), 4)       # perfect detectors, no false alarm among 1024 negatives
0.0066
>>> round(detectable_rate(1024, 0, 156), 4)        # 156 real negatives alone cannot show rates below 2%
0.0241
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import binom, hypergeom

from ...errors import DiffauditError

ALPHA = 0.05  # the decision's level
POWER = 0.8  # the power at which the detectable rate is stated
_TAIL = 1e-12  # k_neg values of smaller probability are left out of the power sum


def _check(k: int, n: int, what: str) -> None:
    if n < 1:
        raise DiffauditError(f"{what}: the number of images must be >= 1, got {n}")
    if not 0 <= k <= n:
        raise DiffauditError(f"{what}: the number flagged must be in [0, {n}], got {k}")


def excess_p_value(k: int, n: int, k_neg: int, n_neg: int) -> float:
    """One-sided p-value of Fisher's exact test of "k of n flags exceed k_neg of n_neg flags" (module docstring).

    >>> from scipy.stats import fisher_exact
    >>> round(excess_p_value(19, 1024, 0, 156), 4), round(float(fisher_exact([[19, 1005], [0, 156]], "greater")[1]), 4)
    (0.0661, 0.0661)
    """
    _check(k, n, "audited samples")
    _check(k_neg, n_neg, "negatives")
    return float(min(1.0, hypergeom.sf(k - 1, n + n_neg, k + k_neg, n)))


def critical_count(n: int, k_neg: int, n_neg: int, alpha: float = ALPHA) -> int:
    """The smallest k of n that the test rejects at, against k_neg of n_neg (n + 1 when none does): the p-value
    falls as k grows, so a bisection finds it."""
    if excess_p_value(n, n, k_neg, n_neg) > alpha:
        return n + 1
    lo, hi = 0, n  # p(lo) > alpha (or lo = 0), p(hi) <= alpha
    if excess_p_value(0, n, k_neg, n_neg) <= alpha:
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if excess_p_value(mid, n, k_neg, n_neg) <= alpha:
            hi = mid
        else:
            lo = mid
    return hi


def power(rho: float, n: int, k_neg: int, n_neg: int, *, sensitivity: float = 1.0,
          critical: Callable[[int], int] | None = None) -> float:
    """P(the audit shows reproduction) at reproduction rate rho, with the negatives' rate f = k_neg / n_neg
    (module docstring). ``critical(k_neg)`` gives the rejection threshold (default: Fisher's test at ALPHA)."""
    critical = critical or (lambda kn: critical_count(n, kn, n_neg))
    f = k_neg / n_neg
    pi = rho * sensitivity + (1 - rho) * f
    if f == 0:
        support = np.array([0])
    else:
        support = np.arange(int(binom.ppf(_TAIL, n_neg, f)), int(binom.isf(_TAIL, n_neg, f)) + 1)
    weights = binom.pmf(support, n_neg, f)
    return float(sum(w * binom.sf(critical(int(kn)) - 1, n, pi) for kn, w in zip(support, weights)))


def detectable_rate(n: int, k_neg: int, n_neg: int, *, sensitivity: float = 1.0, target: float = POWER,
                    critical: Callable[[int], int] | None = None) -> float | None:
    """The smallest reproduction rate the audit shows with probability ``target`` (None: no rate up to 1 is)."""
    if sensitivity is None or not 0 < sensitivity <= 1:
        return None
    cache: dict[int, int] = {}
    base = critical or (lambda kn: critical_count(n, kn, n_neg))

    def crit(kn: int) -> int:
        if kn not in cache:
            cache[kn] = base(kn)
        return cache[kn]

    at = lambda rho: power(rho, n, k_neg, n_neg, sensitivity=sensitivity, critical=crit)  # noqa: E731
    if at(1.0) < target:
        return None
    lo, hi = 0.0, 1.0
    while hi - lo > max(1e-6, 1e-4 * hi):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 16
        if at(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi
