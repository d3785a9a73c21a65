"""Detector curves: ROC, AUC and the true-positive rate at a fixed false-positive rate, as membership-inference audits
report them (pure numpy; tested against scikit-learn and torchmetrics on fixed scores).

A detector flags an image when its score exceeds a threshold; sweeping the threshold over every distinct score traces
the ROC curve from (0, 0) to (1, 1). The AUC is the area under it (the trapezoidal rule, which equals the probability
that a random positive scores above a random negative, ties counted half). TPR at FPR = x is the largest TPR of a
threshold whose FPR does not exceed x; with n negatives an FPR below 1/n cannot be resolved, and it is reported as
None rather than as a number the data cannot support.
"""

from __future__ import annotations

import numpy as np

from ..errors import DiffauditError


def roc_curve(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): flag when score >= threshold, thresholds decreasing, starting at (0, 0) with +inf."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if len(neg) == 0 or len(pos) == 0:
        raise DiffauditError("a ROC curve needs at least one negative and one positive score")
    scores = np.concatenate([pos, neg])
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # the last index of each distinct score
    tp, fp = np.cumsum(labels)[last], np.cumsum(1 - labels)[last]
    return (np.r_[0.0, fp / len(neg)], np.r_[0.0, tp / len(pos)], np.r_[np.inf, scores[last]])


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float, n_negatives: int) -> float | None:
    """The largest TPR at FPR <= ``target``; None when ``target`` is below 1 / n_negatives (not resolvable)."""
    if target < 1.0 / n_negatives:
        return None
    return float(tpr[fpr <= target + 1e-12].max())


def threshold_for_fpr(negatives: np.ndarray, target: float) -> float:
    """The smallest threshold t with "score > t" flagging at most ``target`` of ``negatives`` (a detector's threshold
    for a target false-positive rate, measured on these negatives)."""
    neg = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    allowed = int(np.floor(target * len(neg) + 1e-9))  # negatives that may lie above the threshold
    return float(neg[allowed]) if allowed < len(neg) else float(-np.inf)


def detector_curve(negatives: np.ndarray, positives: np.ndarray, *, threshold: float) -> dict:
    """The ``roc`` entry of one detector: AUC, TPR at 1% and 0.1% FPR, where ``threshold`` sits, and the curve."""
    fpr, tpr, _ = roc_curve(negatives, positives)
    neg, pos = np.asarray(negatives), np.asarray(positives)
    return {"auc": auc(fpr, tpr), "tpr_at_fpr_1pct": tpr_at(fpr, tpr, 0.01, len(neg)),
            "tpr_at_fpr_0.1pct": tpr_at(fpr, tpr, 0.001, len(neg)),
            "threshold": {"value": threshold, "fpr": float((neg > threshold).mean()), "tpr": float((pos > threshold).mean())},
            "n_negatives": int(len(neg)), "n_positives": int(len(pos)),
            "curve": {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}}
