"""The classifiers' training criterion as classifiers/metrics.json records it, read for the verdict.

``c_p.criterion`` and ``c_id.criterion`` say what each classifier had to reach on held-out data (a recall on
noise-free shifted copies of x_p, a false-positive rate on real images of the val split), whether it did before its
cap, what was measured and after how many steps. A classifier that missed it makes the verdict inconclusive; one that
met it leaves the verdict to the count. Classifiers trained before the criterion existed record none: the verdict then
falls back to the detectors' recognised share of clean copies of x_p (``audit.count.verdict.MIN_SENSITIVITY``).
"""

from __future__ import annotations

from ..errors import DiffauditError

NAMES = ("c_p", "c_id")


def _rate(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DiffauditError(f"classifiers/metrics.json {where} must be a rate in [0, 1], got {value!r}: the file was "
                             "edited or damaged; rerun 'diffaudit train-classifiers'")
    return float(value)


def missed(name: str, c: dict) -> str:
    """Why classifier ``name``, with criterion record ``c``, makes the verdict inconclusive."""
    got, want = c["measured"], {"recall": c["recall"], "fpr": c["fpr"]}
    parts = []
    if got["recall"] < want["recall"]:
        parts.append(f"recognised only {got['recall']:.0%} of the held-out copies of x_p (at least {want['recall']:.0%} "
                     "required), so the count can miss reproductions")
    if got["fpr"] > want["fpr"]:
        parts.append(f"flagged {got['fpr']:.1%} of held-out real images (at most {want['fpr']:.0%} allowed), so the count "
                     "can hold false alarms")
    return f"{name} missed its training criterion at its cap of {c['cap_steps']} steps: it " + " and ".join(parts)


def criterion_verdict(metrics: dict) -> tuple[bool, str] | None:
    """(met, reason) over both classifiers' recorded criteria: met when every one was met, else the reasons of
    those that missed it; None when metrics.json records no criterion (classifiers trained before it existed)."""
    records = {name: (metrics.get(name) or {}).get("criterion") for name in NAMES if isinstance(metrics.get(name), dict)}
    records = {name: c for name, c in records.items() if c is not None}
    if not records:
        return None
    reasons = []
    for name, c in records.items():
        if not isinstance(c, dict) or not isinstance(c.get("measured"), dict) or not isinstance(c.get("met"), bool):
            raise DiffauditError(f"classifiers/metrics.json {name}.criterion is not as diffaudit writes it: the file was "
                                 "edited or damaged; rerun 'diffaudit train-classifiers'")
        for key in ("recall", "fpr"):
            _rate(c.get(key), f"{name}.criterion.{key}")
            _rate(c["measured"].get(key), f"{name}.criterion.measured.{key}")
        met = c["measured"]["recall"] >= c["recall"] and c["measured"]["fpr"] <= c["fpr"]
        if met != c["met"]:
            raise DiffauditError(f"classifiers/metrics.json {name}.criterion.met is {c['met']} but its measured rates say "
                                 f"{met}: the file was edited or damaged; rerun 'diffaudit train-classifiers'")
        if not met:
            reasons.append(missed(name, c))
    return (not reasons, "; ".join(reasons))
