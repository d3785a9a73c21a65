"""The reproduction count's statistics (Sec. 5.3, Table 1): pure functions over counts, through scipy.stats.

Every generated image is one Bernoulli trial "is it x_p?" with unknown probability p, so the number of
q-positives |q| among N images is Binomial(N, p). Under full memorisation a model draws one of its N_D
training images uniformly, p = 1/N_D and E|q| = N / N_D.

* H0: p = 1/N_D against H1: p < 1/N_D, the one-sided exact binomial test: p-value = P(X <= |q|), X ~ Bin(N, 1/N_D).
* The Clopper–Pearson interval for p: [B(a/2; k, N-k+1), B(1-a/2; k+1, N-k)] with B the beta quantile (0 below
  at k = 0, 1 above at k = N). With no positive the one-sided upper bound 1 - a^(1/N) (about 3/N for a = 0.05,
  the "rule of three") still bounds the probability of reproducing x_p.
"""

from __future__ import annotations

from scipy.stats import binomtest

from ...errors import DiffauditError


#: the largest count the tests take: every integer up to it is exact in a float
MAX_COUNT = 2**53


def _check(k: int, n: int) -> None:
    if not 1 <= n <= MAX_COUNT:
        raise DiffauditError(f"the number of generated images N must be in [1, 2^53], got {n}")
    if not 0 <= k <= n:
        raise DiffauditError(f"the number of positives must be in [0, N={n}], got {k}")


def clopper_pearson(k: int, n: int, confidence: float = 0.95, *, alternative: str = "two-sided") -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial probability from k successes in n trials.

    ``alternative='less'`` gives the one-sided interval [0, upper].

    >>> low, high = clopper_pearson(0, 1000)
    >>> low, round(high, 5)
    (0.0, 0.00368)
    >>> round(clopper_pearson(0, 1000, alternative="less")[1], 5)   # 1 - 0.05 ** (1 / 1000)
    0.00299
    """
    _check(k, n)
    if not 0 < confidence < 1:
        raise DiffauditError(f"the confidence level must be in (0, 1), got {confidence}")
    ci = binomtest(k, n, alternative=alternative).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def reproduction_test(q: int, n: int, n_train: int, confidence: float = 0.95) -> dict:
    """Table 1's test for |q| reproductions of x_p in n generated images of a model trained on n_train images.

    >>> r = reproduction_test(151, 150_000, 1000)   # the paper's N_D = 1000 row
    >>> r["expected_q"], round(r["p_value"], 3)
    (150.0, 0.554)
    """
    _check(q, n)
    if n_train < 1:
        raise DiffauditError(f"N_D must be >= 1, got {n_train}")
    p0 = 1.0 / n_train
    return {
        "n_samples": int(n),
        "q": int(q),
        "expected_q": n * p0,
        "p_null": p0,
        "p_value": float(binomtest(q, n, p0, alternative="less").pvalue),
        "rate": q / n,
        "rate_ci95": list(clopper_pearson(q, n, confidence)),
        "rate_upper95": clopper_pearson(q, n, confidence, alternative="less")[1],
        "confidence": confidence,
    }
