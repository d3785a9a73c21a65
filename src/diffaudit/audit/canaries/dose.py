"""Memorisation by duplication count: the reproduction rate of the included canaries by d, and its trend.

Each included candidate j occurs d_j times in D_p and is reproduced by k_j of the N samples. Per d the table gives
the candidates, how many were reproduced at least once (with a Clopper–Pearson interval) and the pooled rate
Σ k_j / (N · candidates). The trend test is a logistic regression of k_j out of N on log2 d (a binomial GLM fitted by
iteratively reweighted least squares). Candidates differ beyond d (some images are easier to copy), so the counts
are overdispersed: the slope's standard error is scaled by the Pearson dispersion when it exceeds 1 (the
quasi-binomial model) for its 95% t-interval, and the p-value is the likelihood-ratio test of the slope over that
dispersion (an F test), which stays valid where the rates of some d reach 0 or 1 and the slope itself runs off (then
reported as separated: no finite slope, only its direction, no interval).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from ...errors import DiffauditError
from ..count.stats import clopper_pearson


def _fit(x: np.ndarray, k: np.ndarray, n: int, iterations: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """(coefficients [intercept, slope], their covariance, Pearson dispersion) of logit(k / n) = a + b x."""
    design = np.column_stack([np.ones_like(x), x])
    y = (k + 0.5) / (n + 1.0)  # start inside (0, 1)
    beta = np.linalg.lstsq(design, np.log(y / (1 - y)), rcond=None)[0]
    for _ in range(iterations):
        p = special.expit(design @ beta)
        w = np.maximum(n * p * (1 - p), 1e-12)
        z = design @ beta + (k - n * p) / w
        new = np.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w * z))
        if np.max(np.abs(new - beta)) < 1e-10:
            beta = new
            break
        beta = new
    p = np.clip(special.expit(design @ beta), 1e-12, 1 - 1e-12)
    cov = np.linalg.inv(design.T @ ((n * p * (1 - p))[:, None] * design))
    dof = max(1, len(k) - 2)
    dispersion = float(np.sum((k - n * p) ** 2 / (n * p * (1 - p))) / dof)
    return beta, cov, dispersion


def dose_response(counts: np.ndarray, duplicates: np.ndarray, n: int) -> dict:
    """The table by d and the trend test, from the included candidates' ``counts`` k_j of ``n`` samples and their
    ``duplicates`` d_j (module docstring)."""
    counts, duplicates = np.asarray(counts, dtype=np.int64), np.asarray(duplicates, dtype=np.int64)
    if counts.shape != duplicates.shape or (duplicates < 1).any() or n < 1:
        raise DiffauditError("one count and one duplication count >= 1 per included candidate, and N >= 1")
    rows = []
    for d in sorted(set(duplicates.tolist())):
        k = counts[duplicates == d]
        reproduced = int((k > 0).sum())
        pooled = int(k.sum())
        rows.append({"d": d, "candidates": len(k), "reproduced": reproduced,
                     "reproduced_share": reproduced / len(k), "reproduced_ci95": list(clopper_pearson(reproduced, len(k))),
                     "samples": pooled, "rate": pooled / (n * len(k)),
                     "rate_ci95": list(clopper_pearson(pooled, n * len(k)))})
    out = {"by_d": rows, "n_samples": n}
    if len(rows) < 2:
        out["trend"] = None
        out["trend_note"] = "one duplication count only: no trend to test"
        return out
    if counts.sum() == 0 or (counts == n).all():
        out["trend"] = None
        out["trend_note"] = ("no candidate was reproduced: the slope is not identified" if counts.sum() == 0 else
                             "every sample reproduces every candidate: the slope is not identified")
        return out
    x, k = np.log2(duplicates.astype(np.float64)), counts.astype(np.float64)
    beta, cov, dispersion = _fit(x, k, n)
    scale = max(1.0, dispersion)
    dof = max(1, len(k) - 2)
    # the likelihood-ratio test of the slope, scaled by the dispersion (an F test): valid also where the fitted rates
    # reach 0 or 1 (separation), where the slope runs off and its Wald interval means nothing
    p_full = np.clip(special.expit(beta[0] + beta[1] * x), 1e-12, 1 - 1e-12)
    p_null = np.clip(k.sum() / (n * len(k)), 1e-12, 1 - 1e-12)
    loglik = lambda p: float(np.sum(k * np.log(p) + (n - k) * np.log(1 - p)))  # noqa: E731
    lr = max(0.0, 2 * (loglik(p_full) - loglik(p_null)))
    separated = bool(np.any(p_full < 1e-8) or np.any(p_full > 1 - 1e-8) or abs(beta[1]) > 20)
    se = float(np.sqrt(cov[1, 1] * scale))
    # under separation the likelihood keeps rising along the slope: the fit's last iterate is no estimate, so the
    # slope is reported as not finite (None) with its direction, and only the likelihood-ratio test stands
    half = stats.t.ppf(0.975, dof) * se
    out["trend"] = {"model": "logit(k_j / N) = a + b log2(d_j), quasi-binomial",
                    "slope": None if separated else float(beta[1]),
                    "slope_ci95": None if separated else [float(beta[1] - half), float(beta[1] + half)],
                    "odds_ratio_per_doubling": None if separated else float(np.exp(min(beta[1], 700.0))),
                    "direction": int(np.sign(beta[1])), "dispersion": dispersion,
                    "p_value": float(stats.f.sf(lr / scale, 1, dof)), "test": "likelihood ratio over the dispersion (F)",
                    "separated": separated}
    return out
