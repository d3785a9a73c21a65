"""The verdict's decision: Fisher's exact test of the audited samples' flags against the negatives', its error rate
and power by simulation, the detectable rate it states, and a verdict recomputed from the primary counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import fisher_exact, hypergeom

from diffaudit.audit.count.stats import reproduction_test
from diffaudit.audit.count.twosample import critical_count, detectable_rate, excess_p_value, power
from diffaudit.audit.count.verdict import decision, primary_counts, risk_level, verdict_section
from diffaudit.config import AuditConfig, ExternalConfig
from diffaudit.errors import DiffauditError

N_REAL = 156  # BreastMNIST's held-out test images


def _results(q: int, n: int, n_train: int, *, real: tuple[int, int] = (0, N_REAL),
             control: tuple[int, int] | None = None, sens: float = 1.0) -> tuple[dict, dict]:
    rep = {**reproduction_test(q, n, n_train), "c_p": q, "c_id": q,
           "detectors": {"c_p": {"kind": "classifier"}, "c_id": {"kind": "classifier"}}, "false_positive_rate": {}}
    if control is not None:
        rep["false_positive_rate"]["control_samples"] = {"q": {"positives": control[0], "n": control[1]}}
    metrics = {"false_positive_rate": {"heldout_real": {"q": {"positives": real[0], "n": real[1]}}},
               "true_positive_rate": {"copies_of_x_p": {"0": {"q": {"positives": round(200 * sens), "n": 200,
                                                                    "rate": sens}}}}}
    return {"n_train": n_train, "reproduction": rep}, metrics


def _levels(rng, *, rho: float, f: float, n: int, n_neg: int, n_train: int, sens: float = 1.0, audits: int = 500):
    """The levels of ``audits`` simulated audits: each sample reproduces x_p with probability rho (then flagged with
    probability sens), any other image is flagged with probability f; the negatives are flagged with probability f."""
    k = rng.binomial(n, rho * sens + (1 - rho) * f, audits)
    k_neg = rng.binomial(n_neg, f, audits)
    out = []
    for q, kn in zip(k, k_neg):
        counts = {"q": int(q), "n": n, "n_train": n_train, "sequential": None}
        lo, hi = reproduction_test(int(q), n, n_train)["rate_ci95"]
        shown = decision(counts, {"positives": int(kn), "n": n_neg})["shown"]
        out.append(risk_level(shown, lo, hi, 1 / n_train, sens)[0])
    return np.array(out)


def test_the_p_value_is_fishers_one_sided_exact_test():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, n_neg = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        k, kn = int(rng.integers(0, n + 1)), int(rng.integers(0, n_neg + 1))
        assert excess_p_value(k, n, kn, n_neg) == pytest.approx(
            fisher_exact([[k, n - k], [kn, n_neg - kn]], alternative="greater")[1], rel=1e-9, abs=1e-12)
    for n, kn, n_neg in ((1024, 0, 1024), (256, 3, 156), (1024, 12, 1024)):  # the critical count is the boundary
        c = critical_count(n, kn, n_neg)
        assert excess_p_value(c, n, kn, n_neg) <= 0.05 < excess_p_value(c - 1, n, kn, n_neg)


@pytest.mark.parametrize("f,n_neg", [(0.0, 1024), (0.002, 1024), (0.02, 1024), (0.002, N_REAL)])
def test_a_model_with_no_reproduction_is_called_elevated_or_high_in_at_most_5_percent(f, n_neg):
    levels = _levels(np.random.default_rng(1), rho=0.0, f=f, n=1024, n_neg=n_neg, n_train=32)
    assert np.isin(levels, ["elevated", "high"]).mean() <= 0.05


def test_a_memoriser_at_2_percent_is_never_called_low():
    """N = 1024, N_D = 32: 156 real negatives and 1024 control negatives; the control's samples are the negatives."""
    rng = np.random.default_rng(2)
    for f in (0.0, 0.0005):  # detectors without false alarms, or about one in 2000 images
        levels = _levels(rng, rho=0.02, f=f, n=1024, n_neg=1024, n_train=32, sens=0.99)
        assert np.isin(levels, ["elevated", "high"]).all()
    # with false alarms on 0.2% of images the test's power at 2% is 99.6%: a few audits in 1000 can miss it
    levels = _levels(rng, rho=0.02, f=0.002, n=1024, n_neg=1024, n_train=32, sens=0.99)
    assert (levels == "low").mean() <= 0.01 and power(0.02, 1024, 2, 1024, sensitivity=0.99) > 0.99
    for seed in range(5):  # the same through the full verdict, with both kinds of negatives present
        r = np.random.default_rng(seed)
        q, kc, kr = int(r.binomial(1024, 0.02 * 0.99 + 0.98 * 0.002)), int(r.binomial(1024, 0.002)), 0
        v = verdict_section(*_results(q, 1024, 32, real=(kr, N_REAL), control=(kc, 1024), sens=0.99))
        assert v["level"] in ("elevated", "high") and v["decision"]["negatives"]["source"] == "control_samples"


def test_the_power_curve_matches_simulation_and_rises():
    rng = np.random.default_rng(3)
    n, kn, n_neg, sims = 1024, 2, 1024, 1000
    f = kn / n_neg
    curve = []
    for rho in (0.0, 0.004, 0.008, 0.016):
        k = rng.binomial(n, rho + (1 - rho) * f, sims)
        k_neg = rng.binomial(n_neg, f, sims)
        simulated = np.mean(hypergeom.sf(k - 1, n + n_neg, k + k_neg, n) <= 0.05)
        stated = power(rho, n, kn, n_neg)
        assert abs(simulated - stated) < 0.045, (rho, simulated, stated)
        curve.append(stated)
    assert curve == sorted(curve) and curve[0] <= 0.05 and curve[-1] > 0.95


@pytest.mark.parametrize("n", [256, 1024])
@pytest.mark.parametrize("kn,n_neg,sens", [(0, 1024, 1.0), (2, 1024, 0.95), (0, N_REAL, 1.0)])
def test_the_stated_detectable_rate_is_where_simulated_power_reaches_80_percent(n, kn, n_neg, sens):
    rho = detectable_rate(n, kn, n_neg, sensitivity=sens)
    rng = np.random.default_rng(n + kn)
    f, sims = kn / n_neg, 4000

    def simulated(r: float) -> float:
        k = rng.binomial(n, r * sens + (1 - r) * f, sims)
        k_neg = rng.binomial(n_neg, f, sims)
        return float(np.mean(hypergeom.sf(k - 1, n + n_neg, k + k_neg, n) <= 0.05))

    assert 0.77 <= simulated(rho) <= 0.86
    assert simulated(rho / 1.5) < 0.75


def test_the_verdict_says_what_a_low_audit_could_have_seen_and_what_its_negatives_are():
    v = verdict_section(*_results(0, 1024, 128, control=(0, 1024)))
    assert v["level"] == "low" and "would have detected rates above 6.56 in 1 000" in v["reason"]
    assert v["detectable_rate"] == pytest.approx(detectable_rate(1024, 0, 1024))
    real_only = verdict_section(*_results(0, 1024, 128))
    assert any("156 held-out real images only" in c and "24.1 in 1 000" in c for c in real_only["cautions"])


def test_the_table_1_cell_that_read_low_is_elevated_with_a_control_model():
    """BreastMNIST N_D = 32: 19 of 1024 flagged, none of 156 test images. Against the real images alone the flags do
    not stand out (Fisher p = 0.066); against 1024 control samples with none flagged they do (p = 2e-6)."""
    assert verdict_section(*_results(19, 1024, 32))["level"] == "low"
    v = verdict_section(*_results(19, 1024, 32, control=(0, 1024)))
    assert v["level"] == "elevated" and v["decision"]["p_value"] < 1e-5


@pytest.mark.parametrize("edit,match", [
    (dict(q=-5), r"reproduction.q must be an integer >= 0, got -5"),
    (dict(n_samples=0), r"reproduction.n_samples must be an integer >= 1"),
    (dict(q=300), r"q = 300 exceeds n_samples = 256"),
    (dict(q="17"), r"reproduction.q must be an integer"),
    (dict(rate_ci95=[0, 0.0001]), r"rate_ci95 = \[0, 0.0001\] does not follow from its counts"),
    (dict(rate_upper95=0.0001), r"rate_upper95 = 0.0001 does not follow"),
    (dict(p_value=0.9), r"p_value = 0.9 does not follow"),
])
def test_the_verdict_refuses_impossible_or_edited_counts_by_name(edit, match):
    results, metrics = _results(17, 256, 16)
    results["reproduction"].update(edit)
    with pytest.raises(DiffauditError, match=match):
        verdict_section(results, metrics)


def test_edited_negatives_and_sections_of_the_wrong_type_are_refused():
    results, metrics = _results(17, 256, 16, control=(3, 256))
    results["reproduction"]["false_positive_rate"]["control_samples"]["q"]["positives"] = 999
    with pytest.raises(DiffauditError, match="positives = 999 exceeds its n = 256"):
        verdict_section(results, metrics)
    with pytest.raises(DiffauditError, match="results.json reproduction must be an object, got list"):
        primary_counts({"n_train": 16, "reproduction": [1]})


def test_the_control_model_is_on_by_default_when_diffaudit_trains_the_model():
    assert AuditConfig().with_control and not AuditConfig(control=False).with_control
    ext = ExternalConfig(path="m")
    assert not AuditConfig(external=ext).with_control
    assert AuditConfig(external=ext, control_model=ExternalConfig(path="c")).with_control
    with pytest.raises(DiffauditError, match="export --control"):
        AuditConfig(external=ext, control=True)
    with pytest.raises(DiffauditError, match="--control-model is the control of a model trained elsewhere"):
        AuditConfig(control_model=ExternalConfig(path="c"))
