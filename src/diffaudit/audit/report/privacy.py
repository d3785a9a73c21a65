"""The ``privacy`` section of results.json for a DP-trained model: the formal bound beside the measured rate."""

from __future__ import annotations

from ...errors import DiffauditError
from ...privacy.bounds import dpsgd_bound, eps_delta_bound
from ..count.stats import clopper_pearson


def privacy_section(dp: dict, reproduction: dict) -> dict:
    """The ``privacy`` section of results.json for a DP-trained model: its accounting, and the formal bound on the
    probability that one generated image is x_p, beside the audit's empirical interval for that probability.

    κ, the baseline, is the probability that one image from a model that never saw x_p is flagged as x_p. It is
    estimated from the detectors' false positives on held-out real images (and on a control model's samples when
    counted), taking the upper 95% Clopper–Pearson limit, so the bound errs on the safe side. Each generated image
    is post-processing of the DP model, so P(flagged | x_p trained on) <= 1 - f(κ) for the model's trade-off f."""
    fpr = reproduction.get("false_positive_rate", {})
    sources = {name: fpr[name].get("q") for name in ("heldout_real", "control_samples")
               if isinstance(fpr.get(name), dict)}
    sources = {k: v for k, v in sources.items() if v}
    if not sources:
        raise DiffauditError("the formal bound needs the detectors' false-positive rates; count with --detector classifiers")
    positives = sum(v["positives"] for v in sources.values())
    n = sum(v["n"] for v in sources.values())
    kappa = float(clopper_pearson(positives, n, alternative="less")[1])
    eps = dp["epsilon"]
    numeric = dpsgd_bound(kappa, dp["sample_rate"], dp["noise_multiplier"], dp["steps"])
    return {
        "epsilon": eps, "delta": dp["delta"], "noise_multiplier": dp["noise_multiplier"], "sample_rate": dp["sample_rate"],
        "steps": dp["steps"], "kappa": kappa,
        "kappa_note": f"upper 95% limit of the detectors' false-positive rate, {positives}/{n} on {', '.join(sources)}",
        "bound_dpsgd": numeric.bound, "bound_numerical_error": numeric.numerical_error,
        "bound_eps_delta": {name: eps_delta_bound(kappa, e, dp["delta"]) for name, e in eps.items()},
        "bound_clt_gdp": numeric.clt_bound, "clt_mu": numeric.clt_mu,
        "empirical_rate": reproduction["rate"], "empirical_rate_ci95": reproduction["rate_ci95"],
    }
