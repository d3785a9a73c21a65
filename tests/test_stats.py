"""Table 1's statistics against independent formulas (binomial CDF, beta quantiles), edge cases included."""

import numpy as np
import pytest
from scipy.stats import beta, binom

from diffaudit.audit.count.stats import clopper_pearson, reproduction_test
from diffaudit.errors import DiffauditError

CASES = [  # (q, N, N_D)
    (0, 1, 2), (1, 1, 2), (0, 150_000, 5000), (151, 150_000, 1000), (0, 64, 32), (64, 64, 32), (3, 2000, 64),
    (31, 2000, 64), (500, 1000, 4),
]


@pytest.mark.parametrize("q,n,n_d", CASES)
def test_against_closed_forms(q, n, n_d):
    r = reproduction_test(q, n, n_d)
    assert r["expected_q"] == pytest.approx(n / n_d)
    assert r["p_value"] == pytest.approx(binom.cdf(q, n, 1 / n_d), rel=1e-9, abs=1e-300)
    a = 0.05
    low = 0.0 if q == 0 else beta.ppf(a / 2, q, n - q + 1)
    high = 1.0 if q == n else beta.ppf(1 - a / 2, q + 1, n - q)
    np.testing.assert_allclose(r["rate_ci95"], [low, high], rtol=1e-7, atol=1e-15)
    upper = 1.0 if q == n else beta.ppf(1 - a, q + 1, n - q)
    assert r["rate_upper95"] == pytest.approx(upper, rel=1e-7)
    assert low <= q / n <= high


def test_zero_positives_still_bound_the_probability():
    # no reproduction in N images: the one-sided bound is 1 - 0.05^(1/N), about 3/N
    for n in (100, 2000, 150_000):
        r = reproduction_test(0, n, 10)
        assert r["rate_upper95"] == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-7)
        assert 2.9 / n < r["rate_upper95"] < 3.01 / n
        assert r["rate_ci95"][0] == 0.0


def test_the_paper_rows_reject_h0_except_full_memorisation():
    # Table 1: 151 of 150 000 at N_D = 1000 is what memorisation predicts; 0 at N_D = 5000 rejects H0
    assert reproduction_test(151, 150_000, 1000)["p_value"] > 0.5
    assert reproduction_test(0, 150_000, 5000)["p_value"] < 1e-12


@pytest.mark.parametrize("args,match", [((0, 0, 4), r"N must be in \[1, 2\^53\]"), ((5, 4, 4), r"in \[0, N=4\]"),
                                        ((1, 4, 0), "N_D must be >= 1"), ((-1, 4, 4), r"in \[0, N=4\]")])
def test_bad_counts(args, match):
    with pytest.raises(DiffauditError, match=match):
        reproduction_test(*args)


def test_bad_confidence():
    with pytest.raises(DiffauditError, match="confidence"):
        clopper_pearson(1, 10, confidence=1.0)
