"""The census's threshold and what it promises (CopyMark's protocol): fitted on one split of real images the model
never saw, checked on another.

**Fit.** Each held-out image of the evaluation split is matched to its nearest training image; the threshold tau is
the k-th smallest of those n distances, k = floor(fpr * n), and a sample is a copy when its nearest training image
is strictly closer than tau. At most k of the n evaluation images are then closer than tau: the false-positive rate on
them is at most ``fpr``. When n < 1 / fpr, k = 0 and tau is the smallest held-out distance: no evaluation image is a
false positive, but n images cannot show a rate as small as the one asked; the record says so (``resolved``).

**Check.** The held-out images of the test split, never used for tau, give the realised false-positive rate, with
its Clopper–Pearson interval: the number a reader can hold the census to.

**Duplicates across the splits.** A held-out image closer to a training image than ``LEAK_FACTOR`` (¼) of the
median held-out distance is the same picture or scan as that training image, not an image the model never saw: a
public dataset's splits can hold such twins. Left in, one of them sets tau when n < 1 / fpr (tau is then the smallest
held-out distance), and the census goes blind to every copy farther than that twin (a 28-px BreastMNIST run: tau
0.0138 from one val image, no copy flagged while the canary detectors found 58). Such images are left out of both
splits' figures, counted and listed in the record (``split_duplicates``), with their distances, so a reader can
check them.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import DiffauditError
from ..count.stats import clopper_pearson


#: a held-out image closer to a training image than this share of the median held-out distance is a duplicate
LEAK_FACTOR = 0.25


def split_duplicates(distances: np.ndarray, factor: float = LEAK_FACTOR) -> np.ndarray:
    """bool [n]: which held-out images are duplicates of a training image across the splits (module docstring)."""
    d = np.asarray(distances, dtype=np.float64)
    if len(d) == 0:
        return np.zeros(0, dtype=bool)
    return d < factor * float(np.median(d))


def check_fpr(fpr: float) -> float:
    if not (isinstance(fpr, (int, float)) and 0 < fpr < 1 and math.isfinite(fpr)):
        raise DiffauditError(f"--fpr must lie strictly between 0 and 1 (e.g. 0.001 for 0.1%), got {fpr}")
    return float(fpr)


def fit_threshold(heldout: np.ndarray, fpr: float) -> dict:
    """tau from the held-out images' distances to their nearest training image (module docstring)."""
    fpr = check_fpr(fpr)
    d = np.sort(np.asarray(heldout, dtype=np.float64))
    if len(d) < 1:
        raise DiffauditError("the census needs held-out real images to set its threshold; the run has none in its "
                             "evaluation split (prepare the data with val and test splits, --split-ratios)")
    k = int(math.floor(fpr * len(d)))
    tau = float(d[min(k, len(d) - 1)])
    flagged = int((d < tau).sum())
    out = {"threshold": tau, "fpr_target": fpr, "n_eval": int(len(d)), "eval_false_positives": flagged,
           "eval_rate": flagged / len(d), "resolved": k >= 1}
    if k < 1:
        out["note"] = (f"{len(d)} held-out images cannot resolve a false-positive rate of {fpr:g} (that needs at least "
                       f"{math.ceil(1 / fpr)}): the threshold is the smallest held-out distance, and the test split's "
                       "realised rate is what the census promises")
    return out


def check_threshold(heldout: np.ndarray, tau: float) -> dict:
    """The realised false-positive rate of ``tau`` on the test split's held-out images, with its 95% interval."""
    d = np.asarray(heldout, dtype=np.float64)
    if len(d) < 1:
        raise DiffauditError("the census needs held-out real images in its test split to check its threshold; "
                             "prepare the data with a test split (--split-ratios)")
    k = int((d < tau).sum())
    lo, hi = clopper_pearson(k, len(d))
    return {"n_test": int(len(d)), "test_false_positives": k, "test_rate": k / len(d), "test_rate_ci95": [lo, hi]}
