"""The verdict a release decision can rest on, and the provenance of the numbers behind it (results.json ``verdict``
and ``provenance``).

**Recomputed, never trusted.** Every figure the verdict and the release gate use is derived here from the primary
counts of results.json: q positives of N generated images, N_D, the negatives' counts and the detectors'
sensitivity. Impossible counts (q < 0, q > N, N = 0) are refused by name, and so is a stored interval, p-value or
rate that does not follow from its counts: such a results.json was edited or damaged (``diffaudit verify`` names
what else disagrees).

**Risk levels.** From the count: k of N generated images flagged by every detector, the 95% Clopper–Pearson interval
[lo, hi] of the reproduction rate p (a confidence sequence for a sequential count), the rate of full memorisation
p_0 = 1/N_D (a model that stores its training set and draws one image of it uniformly), and the *decision*
"reproduction shown": the audited samples are flagged significantly more often than the negatives, images without
x_p — the samples of a control model trained without x_p when there is one, else the held-out real test images —
by Fisher's exact one-sided test at 5% (``audit/count/twosample.py`` says why that test). After a sequential count the
decision is the confidence sequence's lower limit (at 2.5%) above the negatives' one-sided upper limit (at 2.5%), a
Bonferroni pair valid at any stopping time.

==============  ===========================================================================================
level           when
==============  ===========================================================================================
high            shown and hi >= p_0: reproduction significantly above false alarms, and as frequent as full
                memorisation (not significantly below 1/N_D)
elevated        shown and hi < p_0: significant reproduction, significantly less frequent than full memorisation
low             not shown and hi < p_0: no reproduction beyond false alarms; the rate is at most hi, and the audit
                states the smallest rate it would have shown with 80% probability (its detectable rate)
inconclusive    not shown and hi >= p_0 (too few samples to tell the two apart); or lo > p_0 (more than a memoriser
                would: the detectors fire on these images, see the cautions); or a classifier missed its training
                criterion at its cap (classifiers/metrics.json; without a recorded criterion: the detectors
                recognised fewer than 90% of clean copies of x_p), so they could miss reproductions
==============  ===========================================================================================

The statement gives hi as "at most X in 1 000 generated images reproduce the patient image". The scope is always one
canary (an image that occurs once in the training set), these detectors and this many samples.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from importlib import metadata
from pathlib import Path

from ...adversary.criterion import criterion_verdict
from ...errors import DiffauditError
from ...io import config_hash, read_json
from .sequential import anytime_p_value, confidence_sequence, looks_of
from .stats import MAX_COUNT, clopper_pearson, reproduction_test
from .twosample import ALPHA, POWER, critical_count, detectable_rate, excess_p_value

LEVELS = ("high", "elevated", "low", "inconclusive")
MIN_SENSITIVITY = 0.9  # the detectors must recognise this share of clean copies of x_p for a verdict

RELEASE = {
    "high": "Do not release: the model gives back the identifiable training image about as often as a model that "
            "stores its training set.",
    "elevated": "Do not release without mitigation: the model reproduces the identifiable training image, though "
                "significantly less often than a model that stores its training set.",
    "low": "No reproduction was found beyond the detectors' false alarms. This bounds the risk for an image that occurs "
           "once in the training set; it does not prove anonymity.",
    "inconclusive": "The audit cannot decide; see the reason, and repeat the count with more samples or better detectors "
                    "before a release decision.",
}

DEFINITIONS = (
    "Risk levels, from the 95% interval [lo, hi] of the reproduction rate, full memorisation p_0 = 1/N_D and the "
    "decision 'shown' (the audited samples are flagged significantly more often than images without x_p: a control "
    "model's samples, else held-out real images; Fisher's exact one-sided test at 5%): high = shown and hi ≥ p_0 (as "
    "frequent as a model that stores its training set); elevated = shown and hi < p_0; low = not shown and hi < p_0 "
    "(no reproduction beyond false alarms; the detectable rate is the smallest rate the audit would have shown with 80% "
    "probability); inconclusive = not shown and hi ≥ p_0, or lo > p_0, or a classifier missed its training criterion "
    "(recall on clean copies of x_p, false positives on held-out real images) at its cap.")

_DERIVED = ("expected_q", "p_value", "rate", "rate_ci95", "rate_upper95")


def _count(d: dict, key: str, where: str, *, least: int = 0) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not least <= v <= MAX_COUNT:
        raise DiffauditError(f"results.json {where}.{key} must be an integer >= {least}, got {v!r} (at most 2^53): the "
                             "file was edited or damaged; rerun 'diffaudit count' (and 'diffaudit verify' to see what "
                             "else changed)")
    return v


def _section(results: dict, name: str) -> dict | None:
    v = results.get(name)
    if v is not None and not isinstance(v, dict):
        raise DiffauditError(f"results.json {name} must be an object, got {type(v).__name__}: the file was edited or "
                             "damaged; rerun 'diffaudit count' (and 'diffaudit verify')")
    return v


def primary_counts(results: dict) -> dict | None:
    """q, N, N_D (and a sequential count's look schedule) from results.json, checked: None before a count."""
    rep = _section(results, "reproduction")
    if rep is None:
        return None
    n = _count(rep, "n_samples", "reproduction", least=1)
    q = _count(rep, "q", "reproduction")
    if q > n:
        raise DiffauditError(f"results.json reproduction.q = {q} exceeds n_samples = {n}: the file was edited or damaged; "
                             "rerun 'diffaudit count'")
    n_train = _count(results, "n_train", "results", least=1)
    out = {"q": q, "n": n, "n_train": n_train, "sequential": None}
    if rep.get("design") == "sequential":
        seq = rep.get("sequential")
        positives = (rep.get("positives") or {}).get("q") if isinstance(rep.get("positives"), dict) else None
        if (not isinstance(seq, dict) or not isinstance(positives, list) or len(positives) != q
                or not all(isinstance(i, int) and 0 <= i < n for i in positives)):
            raise DiffauditError("results.json reproduction is a sequential count without its look schedule (sequential"
                                 ".alpha, .shard_size and the q positives' indices): the file was edited or damaged; "
                                 "rerun 'diffaudit count'")
        alpha, shard = seq.get("alpha"), seq.get("shard_size")
        if not isinstance(alpha, (int, float)) or not 0 < alpha < 1 or not isinstance(shard, int) or shard < 1:
            raise DiffauditError(f"results.json reproduction.sequential has alpha {alpha!r} and shard_size {shard!r}; "
                                 "rerun 'diffaudit count'")
        stop = {k: seq.get(k) for k in ("n_samples", "max_n", "reason")}
        if (not all(isinstance(stop[k], int) and not isinstance(stop[k], bool) for k in ("n_samples", "max_n"))
                or stop["n_samples"] != n or stop["max_n"] < n or not isinstance(stop["reason"], str)):
            raise DiffauditError(f"results.json reproduction.sequential says the count stopped at {stop['n_samples']!r} "
                                 f"of at most {stop['max_n']!r} images ({stop['reason']!r}), which does not fit its N = "
                                 f"{n}: the file was edited or damaged; rerun 'diffaudit count'")
        out["sequential"] = {"alpha": float(alpha), "shard_size": shard, "positives": positives}
    return out


def derived_figures(counts: dict) -> dict:
    """The interval, upper limit, p-value and rate that follow from the counts, as the count stage computes them."""
    q, n, n_train = counts["q"], counts["n"], counts["n_train"]
    test = reproduction_test(q, n, n_train)
    out = {k: test[k] for k in _DERIVED}
    seq = counts["sequential"]
    if seq is not None:
        lo, hi = confidence_sequence(q, n, seq["alpha"])
        ks, ns = looks_of(seq["positives"], n, seq["shard_size"])
        out.update(rate_ci95=[lo, hi], rate_upper95=hi, p_value=anytime_p_value(ks, ns, 1.0 / n_train))
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return (isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12))


def check_derived(rep: dict, derived: dict) -> None:
    """Refuse a reproduction section whose stored figures do not follow from its counts."""
    for key in _DERIVED:
        if key not in rep:  # the count writes every one of them
            raise DiffauditError(f"results.json reproduction has no '{key}' (the count writes it): the file was edited "
                                 "or damaged; run 'diffaudit verify' and recount")
        if not _same(rep[key], derived[key]):
            raise DiffauditError(f"results.json reproduction.{key} = {rep[key]!r} does not follow from its counts "
                                 f"({rep['q']} of {rep['n_samples']} give {derived[key]!r}): the file was edited or "
                                 "damaged; run 'diffaudit verify' and recount")


def _fp_count(d, where: str) -> tuple[int, int] | None:
    if not isinstance(d, dict) or not d.get("n"):
        return None
    n = _count(d, "n", where, least=1)
    k = _count(d, "positives", where)
    if k > n:
        raise DiffauditError(f"results.json {where}.positives = {k} exceeds its n = {n}: the file was edited or damaged; "
                             "rerun 'diffaudit count'")
    return k, n


def negatives(reproduction: dict, metrics: dict) -> dict | None:
    """The verdict's negatives: a control model's samples when they were counted (generated images without x_p,
    with the generator's artefacts: the right kind), else the held-out real test images; None when no detector
    measured any (the reference detector alone, whose threshold excludes every other training image)."""
    fpr = reproduction.get("false_positive_rate") or {}
    control = _fp_count((fpr.get("control_samples") or {}).get("q"), "reproduction.false_positive_rate.control_samples.q")
    own = (fpr.get("heldout_real") or {}).get("q")  # at the thresholds the count used
    real = _fp_count(own or ((metrics.get("false_positive_rate") or {}).get("heldout_real") or {}).get("q"),
                     "false_positive_rate.heldout_real.q")
    if control is not None:
        return {"source": "control_samples", "positives": control[0], "n": control[1],
                "text": f"{control[0]} of {control[1]} samples of the control model",
                "real": None if real is None else {"positives": real[0], "n": real[1]}}
    if real is not None:
        return {"source": "heldout_real", "positives": real[0], "n": real[1],
                "text": f"{real[0]} of {real[1]} held-out real images", "real": None}
    return None


def false_positive_bound(reproduction: dict, metrics: dict) -> tuple[float, str]:
    """f and where it comes from: the one-sided 95% upper limit of the negatives' flag rate (reported beside the
    decision; the decision itself is the two-sample test)."""
    neg = negatives(reproduction, metrics)
    if neg is None:
        return 0.0, "not measured (the reference detector alone: its threshold excludes every other training image)"
    return clopper_pearson(neg["positives"], neg["n"], alternative="less")[1], neg["text"]


def dig(d, *keys):
    """``d[k1][k2]...``, or None where a level is missing or not an object (metrics.json as written, or edited)."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def sensitivity(metrics: dict) -> float | None:
    """The share of clean (noise-free, ±1 px) copies of x_p that every detector recognised."""
    rate = dig(metrics, "true_positive_rate", "copies_of_x_p", "0", "q", "rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
        raise DiffauditError(f"classifiers/metrics.json true_positive_rate.copies_of_x_p.0.q.rate must be a rate in "
                             f"[0, 1], got {rate!r}: the file was edited or damaged; rerun 'diffaudit train-classifiers'")
    return rate


def decision(counts: dict, neg: dict | None) -> dict:
    """Is reproduction shown? Fisher's exact test against the negatives (a Bonferroni pair of limits after a
    sequential count; k >= 1 when no negatives were measured), with the rule's critical count for the power."""
    q, n = counts["q"], counts["n"]
    if neg is None:
        return {"shown": q >= 1, "test": "none: no negatives measured; any flag counts (the reference detector's "
                                         "threshold excludes every other training image)",
                "p_value": None, "critical": lambda kn: 1}
    kn, nn = neg["positives"], neg["n"]
    if counts["sequential"] is None:
        p = excess_p_value(q, n, kn, nn)
        return {"shown": p <= ALPHA, "test": "Fisher's exact test, one-sided, audited samples against the negatives",
                "p_value": p, "alpha": ALPHA, "critical": lambda k_neg: critical_count(n, k_neg, nn)}
    a = counts["sequential"]["alpha"] / 2

    def shown_at(k: int, k_neg: int) -> bool:
        return confidence_sequence(k, n, a)[0] > clopper_pearson(k_neg, nn, 1 - a, alternative="less")[1]

    def critical(k_neg: int) -> int:
        if not shown_at(n, k_neg):
            return n + 1
        lo_k, hi_k = 0, n
        while hi_k - lo_k > 1:
            mid = (lo_k + hi_k) // 2
            lo_k, hi_k = (lo_k, mid) if shown_at(mid, k_neg) else (mid, hi_k)
        return hi_k

    return {"shown": shown_at(q, kn), "test": f"the confidence sequence's lower limit (at {a:g}) above the negatives' "
                                              f"one-sided upper limit (at {a:g}): valid at any stopping time",
            "p_value": None, "alpha": 2 * a, "critical": critical}


def detectable_for(counts: dict, neg: dict | None, sens: float | None, *, critical=None) -> float | None:
    """The smallest reproduction rate the decision shows with 80% probability at the count's N, given the negatives
    and the detectors' sensitivity (``twosample.detectable_rate`` with this design's rejection rule)."""
    critical = critical or decision(counts, neg)["critical"]
    return detectable_rate(counts["n"], neg["positives"] if neg else 0, neg["n"] if neg else 1,
                           sensitivity=sens if sens is not None else 1.0, critical=critical)


def risk_level(shown: bool, lo: float, hi: float, p0: float, sens: float | None,
               criterion: tuple[bool, str] | None = None) -> tuple[str, str]:
    """(level, reason) by the table of the module docstring; ``criterion`` is the classifiers' recorded training
    criterion (``adversary.criterion.criterion_verdict``), None where none was recorded."""
    if criterion is not None and not criterion[0]:
        return "inconclusive", criterion[1]
    if criterion is None and sens is not None and sens < MIN_SENSITIVITY:
        return "inconclusive", (f"the detectors recognised only {sens:.0%} of clean copies of x_p, so they can miss "
                                "reproductions")
    if lo > p0:
        return "inconclusive", ("the count is significantly above full memorisation, which no model of this training set "
                                "should reach: the detectors fire on these generated images (measure their false "
                                "positives on a control model's samples)")
    if shown:
        if hi >= p0:
            return "high", "the rate is significantly above the detectors' false alarms and not below full memorisation"
        return "elevated", "the rate is significantly above the detectors' false alarms and below full memorisation"
    if hi < p0:
        return "low", "the rate is not above the detectors' false alarms, and full memorisation is rejected"
    return "inconclusive", "too few samples to tell reproduction from false alarms and from full memorisation"


def verdict_section(results: dict, metrics: dict, *, cautions: list[str] | None = None) -> dict | None:
    """results.json ``verdict``, recomputed from the primary counts: level, rate, interval, decision, detectable
    rate, statement, scope, cautions (None before a count)."""
    counts = primary_counts(results)
    if counts is None:
        return None
    rep = results["reproduction"]
    metrics = metrics if isinstance(metrics, dict) else {}
    derived = derived_figures(counts)
    check_derived(rep, derived)
    q, n, n_d = counts["q"], counts["n"], counts["n_train"]
    lo, hi = derived["rate_ci95"]
    neg = negatives(rep, metrics)
    f, f_source = false_positive_bound(rep, metrics)
    sens = sensitivity(metrics)
    decided = decision(counts, neg)
    level, reason = risk_level(decided["shown"], lo, hi, 1.0 / n_d, sens, criterion_verdict(metrics))
    detectable = detectable_for(counts, neg, sens, critical=decided["critical"])
    can_see = ("no reproduction rate up to 1 would be shown with 80% probability" if detectable is None else
               f"this audit would have detected rates above {per_thousand(detectable)} in 1 000 (80% power)")
    if level == "low":
        reason = f"{reason}; {can_see}"
    notes = list(cautions or [])
    if neg is not None and neg["source"] == "heldout_real":
        notes.append(f"Caution: the false alarms were measured on {neg['n']} held-out real images only (no control "
                     f"model); reproduction rates below about {per_thousand(detectable or 1.0)} in 1 000 cannot be told "
                     "from false alarms with them. A control model (--control, or --control-model for a model trained "
                     "elsewhere) gives as many generated negatives as samples.")
    net = net_of_control(q, n, neg["positives"], neg["n"]) if neg and neg["source"] == "control_samples" else None
    detectors = ", ".join(f"{k} ({v.get('kind')})" for k, v in (rep.get("detectors") or {}).items()
                          if isinstance(v, dict))
    return {
        "level": level, "reason": reason, "release": RELEASE[level],
        "flagged": q, "n_samples": n, "rate": q / n, "interval": [lo, hi], "p_value": derived["p_value"], "full_memorisation_rate": 1.0 / n_d,
        "decision": {"shown": decided["shown"], "test": decided["test"], "p_value": decided["p_value"],
                     "alpha": decided.get("alpha"),
                     "negatives": None if neg is None else {k: neg[k] for k in ("source", "positives", "n")}},
        "detectable_rate": detectable, "detectable_power": POWER,
        "false_positive_bound": f, "false_positive_source": f_source, "sensitivity": sens,
        "statement": f"At most {per_thousand(hi)} in 1 000 generated images reproduce the patient image "
                     f"(95% confidence; {q} of {n} were flagged, a model that stores its {n_d} training images "
                     f"would reproduce it in {per_thousand(1.0 / n_d)} in 1 000).",
        "scope": f"one canary image (x_p) that occurs once among {n_d} training images; detectors {detectors}; "
                 f"{n} generated images; negatives: {f_source}",
        "cautions": notes,
        "net_of_control": net,
        "definitions": DEFINITIONS,
    }


def net_of_control(k: int, n: int, k_c: int, n_c: int) -> dict:
    """The reproduction rate net of a control model's false-positive rate, p - p_c, with a conservative 95% interval:
    the 97.5% Clopper–Pearson intervals of p and of p_c combined as [lo_p - hi_c, hi_p - lo_c] (Bonferroni: both hold
    together with probability at least 95%, so the difference lies in the combined interval at least that often), the
    lower limit clipped at 0."""
    lo, hi = clopper_pearson(k, n, 0.975)
    lo_c, hi_c = clopper_pearson(k_c, n_c, 0.975)
    return {"rate": k / n - k_c / n_c, "interval": [max(0.0, lo - hi_c), hi - lo_c], "control_rate": k_c / n_c,
            "method": "Bonferroni: 97.5% Clopper-Pearson intervals of the rate and of the control's, differenced"}


def per_thousand(rate: float) -> str:
    v = 1000 * rate
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance_section(run: Path, results: dict, manifest: dict, model: dict | None) -> dict:
    """results.json ``provenance``: who made these numbers, when, from which model, data and config."""
    audit = run / "audit.json"
    metrics = run / "classifiers" / "metrics.json"
    return {
        "diffaudit": _version("diffaudit"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "data": {"dataset": manifest["dataset"], "file": manifest.get("file"), "md5": manifest.get("md5"),
                 "official_md5": manifest.get("official_md5")},
        "manifest_digest": manifest.get("digest"),
        "config_digest": config_hash(read_json(audit)) if audit.exists() else None,
        "versions": {"python": platform.python_version(), "torch": _version("torch"),
                     "diffusers": _version("diffusers"), "numpy": _version("numpy")},
        "device": read_json(metrics).get("device") if metrics.exists() else None,
    }
