"""The one-run lower bound on ε (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training run").

Each of m candidates is included in training independently with probability ½. The auditor scores every candidate
from the model's output alone, guesses "in" for the k₊ highest scores and "out" for the k₋ lowest, and abstains on
the rest. Under (ε, 0)-DP, the number V of right guesses among r = k₊ + k₋ is stochastically dominated by
Binomial(r, e^ε / (1 + e^ε)) (their Theorem 3.1), so with v right,

    ε_lower = the largest ε with P[Binomial(r, e^ε / (1 + e^ε)) ≥ v] ≤ β = 1 − confidence

is a lower bound on the ε of any (ε, 0)-DP guarantee the training could have, at confidence 1 − β. For δ > 0 their
Theorem 5.2 adds 2 m δ α to the tail, with α = max over 1 ≤ i ≤ v of P[v > Binomial(r, q) ≥ v − i] / i.

When every guess is right the tail is q^r, so ε_lower = log(p / (1 − p)) with p = β^(1/r) (0 where p ≤ ½).

Choosing (k₊, k₋) after seeing the scores spends confidence: :func:`audit_epsilon` takes the best over a stated
grid at β / (grid size) per point (Bonferroni), so the best is a lower bound at the stated confidence.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats

from ...errors import DiffauditError


def _tail(r: int, v: int, eps: float, m: int, delta: float) -> float:
    """P[Binomial(r, q) ≥ v] (+ 2 m δ α for δ > 0), q = e^ε / (1 + e^ε): the p-value of v right guesses under
    (ε, δ)-DP."""
    q = float(special.expit(eps))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta > 0 and v > 0:
        i = np.arange(1, v + 1)
        alpha = float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i))
        tail += 2 * m * delta * alpha
    return tail


def epsilon_lower_bound(guesses: int, correct: int, *, confidence: float = 0.95, delta: float = 0.0,
                        candidates: int | None = None) -> float:
    """ε_lower of ``correct`` right guesses out of ``guesses`` (module docstring) at ``confidence``; for ``delta`` > 0,
    ``candidates`` is m, the number of candidates the guesses were made among.

    >>> round(epsilon_lower_bound(10, 10), 6) == round(math.log(0.05 ** 0.1 / (1 - 0.05 ** 0.1)), 6)
    True
    >>> epsilon_lower_bound(10, 5)
    0.0
    """
    for name, value in (("guesses", guesses), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DiffauditError(f"{name} must be a whole number >= 0, got {value!r}")
    r, v = int(guesses), int(correct)
    if v > r:
        raise DiffauditError(f"{v} right guesses out of {r}: at most as many right as made")
    if not 0 < confidence < 1:
        raise DiffauditError(f"the confidence must be in (0, 1), got {confidence}")
    if not 0 <= delta < 1:
        raise DiffauditError(f"delta must be in [0, 1), got {delta}")
    m = r if candidates is None else int(candidates)
    if delta > 0 and (candidates is None or m < r):
        raise DiffauditError("with delta > 0 the bound needs the number of candidates (>= the guesses)")
    beta = 1.0 - confidence
    if r == 0 or _tail(r, v, 0.0, m, delta) >= beta:
        return 0.0
    hi = 1.0
    while _tail(r, v, hi, m, delta) < beta:  # the tail tends to 1 as ε grows, so this ends
        hi *= 2
    return float(optimize.brentq(lambda e: _tail(r, v, e, m, delta) - beta, 0.0, hi, xtol=1e-12))


def guesses_from_scores(scores: np.ndarray, k_plus: int, k_minus: int, *, seed: int = 0) -> np.ndarray:
    """+1 ("in") for the ``k_plus`` highest scores, −1 ("out") for the ``k_minus`` lowest, 0 (abstain) for the rest;
    ties are broken by a seeded permutation, which depends on nothing but the seed (so the guesses stay a function of
    the model's output)."""
    scores = np.asarray(scores, dtype=np.float64)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(scores):
        raise DiffauditError(f"k+ = {k_plus} and k- = {k_minus} guesses among {len(scores)} candidates")
    tie = np.random.default_rng(seed).permutation(len(scores))
    order = np.lexsort((tie, scores))  # ascending score, ties in the seeded order
    out = np.zeros(len(scores), dtype=np.int64)
    out[order[len(scores) - k_plus:]] = 1
    out[order[:k_minus]] = -1
    return out


def default_grid(m: int) -> list[tuple[int, int]]:
    """(k₊, k₋) pairs tried: each of k₊ and k₋ in 0, 1, 2, 4, ... and m, with 1 <= k₊ + k₋ <= m. Abstaining matters:
    a memorised candidate's count stands out, an unmemorised one's does not, so the best guesses are often a few
    "in" and many "out" or the reverse."""
    ks = sorted({0, *(2 ** i for i in range(int(math.log2(max(m, 1))) + 1)), m})
    return [(a, b) for a in ks for b in ks if 1 <= a + b <= m]


def audit_epsilon(scores: np.ndarray, included: np.ndarray, *, grid: list[tuple[int, int]] | None = None,
                  confidence: float = 0.95, delta: float = 0.0, seed: int = 0) -> dict:
    """ε_lower from the candidates' ``scores`` and whether each was ``included``: the best over ``grid`` (default
    :func:`default_grid`), each point at confidence 1 − β / len(grid). Returns the best point, every point (the curve
    of ε_lower against the number of guesses) and the correction."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = len(scores)
    if m < 1 or included.shape != (m,):
        raise DiffauditError(f"{m} scores and {included.shape} inclusions: one of each per candidate")
    grid = default_grid(m) if grid is None else [(int(a), int(b)) for a, b in grid]
    if not grid:
        raise DiffauditError("the grid of (k+, k-) guesses is empty")
    level = 1.0 - (1.0 - confidence) / len(grid)
    points = []
    for k_plus, k_minus in grid:
        g = guesses_from_scores(scores, k_plus, k_minus, seed=seed)
        r = int((g != 0).sum())
        v = int(((g == 1) & included).sum() + ((g == -1) & ~included).sum())
        points.append({"k_plus": k_plus, "k_minus": k_minus, "guesses": r, "correct": v,
                       "epsilon": epsilon_lower_bound(r, v, confidence=level, delta=delta, candidates=m)})
    best = max(points, key=lambda p: (p["epsilon"], -p["guesses"]))
    return {"epsilon_lower": best["epsilon"], **{k: best[k] for k in ("k_plus", "k_minus", "guesses", "correct")},
            "confidence": confidence, "delta": delta, "candidates": m, "grid_size": len(grid),
            "per_point_confidence": level, "points": points}
