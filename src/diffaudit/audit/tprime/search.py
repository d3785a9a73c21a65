"""t' (Algorithm 1), a fast search for it, the sounder t'_alpha, and the upper Darboux bound on q(p) (Eq. 6-9).

q_M(t): perturb x_p to time t with the SDE's kernel M times, run the ordinary reverse sampler from t to eps (the
same :func:`~diffaudit.diffusion.samplers.sample`, a shorter time grid) and count how many of the M results the
detectors flag; q_M(t) = k / M, with its Clopper-Pearson interval. The draws at time t come from streams seeded
by (seed, t), so q_M(t) is the same whichever search asks for it and in whatever order.

* The paper's t' = max{t on the grid : q_M(t) > 0}, by an exhaustive pass over the grid.
* The fast search gallops up the grid (indices 0, 1, 3, 7, ...) until q_M = 0, then bisects between the last
  positive and the first negative point. When the positive set is a prefix of the grid ("monotone" profile)
  it returns exactly the exhaustive answer with O(log n) evaluations, most of them at small t where a reverse
  run is short. It never returns a t' below a point it saw positive, and it reports ``non_monotone`` when it saw
  a positive point above a negative one.
* The fast search also stops the M runs at a time as soon as its predicate is decided: it runs them in batches
  of M/4, M/4, M/2 (run j at t is the same draw whatever the batch), and "q_M(t) > 0"
  is decided by the first positive, "significant" once k reaches the critical count of the M-run test or can
  no longer reach it. Both predicates are then exactly those of all M runs, so t' and t'_alpha are unchanged;
  only the cost falls. Such an early-stopped point reports q = k/m over the m runs it made (``runs`` in the
  summary), an estimate from fewer runs; the exhaustive search always makes all M.
* t'_alpha = the largest evaluated t at which q_M(t) is significantly above the chance level p_0 of
  unconditional sampling: the one-sided binomial test of H0 q(t) <= p_0 on k of M rejects at level alpha / n
  (Bonferroni over the n grid points, so chance hits anywhere on the grid make t'_alpha too large with
  probability at most alpha). Near t = T the reverse process forgets x_p and returns it with probability about
  p_0 (1/N_D for a memorising model), so a single chance hit there moves t' but not t'_alpha. The fast search
  finds t'_alpha with the same gallop-and-bisect on the predicate "significant", reusing the evaluations.
* The bound: the upper Darboux sum of Eq. 9 over the evaluated points 0 = t_0 < t_1 < ... <= t',
  sum_i (sigma(t_{i+1}) - sigma(t_i)) * max(q_M(t_i), q_M(t_{i+1})) with q_M(0) := 1 (at t = 0 the start is x_p).
  Between two evaluated points a non-increasing q is at most its left value, so the sum is an upper sum for any
  monotone profile. It is an indicator derived from t' and q_M, not a calibrated probability of reproduction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binom

from ...adversary.detectors import Detector, call_detector
from ...diffusion.generative import Generative, labels_for
from ...errors import DiffauditError
from ...rng import derive_seed
from ..count.stats import clopper_pearson


@dataclass(frozen=True)
class Evaluation:
    """q_M at one time t: ``positives`` of ``m`` reverse runs flagged, at a cost of ``nfe`` network evaluations.

    ``planned`` is the M that q_M(t) is defined over when the runs stopped early (m < planned); 0 means m = M."""

    t: float
    positives: int
    m: int
    nfe: int
    planned: int = 0

    @property
    def M(self) -> int:
        return self.planned or self.m

    @property
    def complete(self) -> bool:
        return self.m >= self.M

    @property
    def q(self) -> float:
        return self.positives / self.m if self.m else math.nan


def make_grid(resolution: float = 0.01, t_max: float = 1.0) -> list[float]:
    """The grid resolution, 2 * resolution, ..., t_max (the paper searched t in steps of 0.01)."""
    if not 0 < resolution <= t_max:
        raise DiffauditError(f"need 0 < resolution <= t_max, got resolution={resolution}, t_max={t_max}")
    n = int(round(t_max / resolution))
    return [round(resolution * (i + 1), 10) for i in range(n)]


def check_grid(grid: Sequence[float], *, t_min: float = 0.0, t_max: float = math.inf) -> list[float]:
    """``grid`` as a list of floats, refused unless it is non-empty, strictly increasing (sorted, no repeats) and
    inside (t_min, t_max]: the fast search bisects on it, and an unsorted grid would make it return a wrong t'."""
    try:
        grid = [float(t) for t in grid]
    except (TypeError, ValueError):
        raise DiffauditError(f"the t grid must be a list of numbers, got {grid!r}") from None
    if not grid:
        raise DiffauditError("the t grid is empty; give at least one time in (0, T]")
    bad = [t for t in grid if not t_min < t <= t_max]
    if bad:
        raise DiffauditError(f"grid times must lie in ({t_min:g}, {t_max:g}]; got {bad[:3]}")
    if any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise DiffauditError("the t grid must be strictly increasing (sorted, without repeats); make it with make_grid")
    return grid


class QM:
    """q_M(t) for one image, a model (:class:`~diffaudit.diffusion.generative.Generative`) and detectors; evaluations
    are cached by t.

    ``steps`` is the number of sampler steps for a run over the whole interval (0, T]; a run from t takes the share
    of them below t (``model.steps_at``), so every run uses the same step size. ``label`` is the class a
    class-conditional model runs back as."""

    def __init__(self, model: Generative, x_p: np.ndarray, detectors: Mapping[str, Detector], *, m: int = 16,
                 seed: int = 0, steps: int = 500, sampler: str = "em", eps: float = 1e-3,
                 device: torch.device | str = "cpu", batch_size: int | None = None, label: int | None = None) -> None:
        """``batch_size``: the most runs per network batch (default M). :meth:`until` runs them in growing batches
        (M/4, M/4, M/2, ... up to ``batch_size``) so that it can stop early: a batch of one image would waste most
        of a CPU's or GPU's throughput on per-call overhead."""
        if m < 1:
            raise DiffauditError(f"M, the number of reverse runs per time, must be >= 1, got {m}")
        if steps < 1:
            raise DiffauditError(f"steps must be >= 1, got {steps}")
        if x_p.dtype != np.uint8 or x_p.ndim not in (3, 4):
            raise DiffauditError(f"x_p must be one uint8 image [C, H, W] or volume [C, D, H, W], got {x_p.dtype} "
                                 f"{x_p.shape}")
        if not detectors:
            raise DiffauditError("q_M needs at least one detector")
        model.check_sampler(sampler)
        self.model, self.x_p, self.detectors = model, x_p, dict(detectors)
        self.m, self.seed, self.steps, self.sampler, self.eps = m, seed, steps, sampler, eps
        self.device, self.batch_size, self.label = device, batch_size or m, label
        self.cache: dict[float, Evaluation] = {}

    @property
    def T(self) -> float:
        return self.model.T

    def steps_at(self, t: float) -> int:
        return self.model.steps_at(t, self.sampler, self.steps)

    def sigma(self, t: float) -> float:
        """sigma of the perturbation a run from t starts with (Eq. 9)."""
        return self.model.sigma(t, self.sampler, self.steps)

    def __call__(self, t: float) -> Evaluation:
        """q_M(t) over all M runs."""
        return self.until(t)

    def until(self, t: float, stop: Callable[[int, int], bool] | None = None) -> Evaluation:
        """Run the M reverse runs at t (continuing any made before) until ``stop(positives, runs)`` is true or all M
        are made. Run j at t is the same draw whether it is made alone or in a batch, early or late."""
        t = float(t)
        e = self.cache.get(t)
        if e is None:
            if not self.eps < t <= self.model.T:
                raise DiffauditError(f"t must lie in (eps={self.eps}, T={self.model.T}], got {t}")
            e = Evaluation(t, 0, 0, 0, planned=self.m)
        seed = derive_seed(self.seed, int(round(t * 1e9)))  # the draws at t depend on (seed, t) only
        per_run = self.model.nfe(self.sampler, self.steps, t)
        while not e.complete and not (stop is not None and stop(e.positives, e.m)):
            step = self.batch_size if stop is None else min(self.batch_size, max(1, self.m // 4, e.m))
            hi = min(self.m, e.m + step)
            idx = range(e.m, hi)
            images = self.model.generate(indices=idx, seed=seed, sampler=self.sampler, steps=self.steps,
                                         t_start=t, x_start=self.x_p, eps=self.eps, device=self.device,
                                         class_labels=labels_for(self.model, self.label, len(idx), self.device))
            flags = np.logical_and.reduce([call_detector(d, images, name) for name, d in self.detectors.items()])
            e = Evaluation(t, e.positives + int(flags.sum()), hi, e.nfe + len(idx) * per_run, planned=self.m)
            self.cache[t] = e
        return e


@dataclass
class Search:
    """What one search saw and concluded."""

    method: str
    grid: list[float]
    evaluations: dict[float, Evaluation] = field(default_factory=dict)
    t_prime: float = 0.0  # 0 when no grid point was positive
    t_prime_alpha: float = 0.0
    non_monotone: bool = False
    wall_s: float = 0.0

    @property
    def nfe(self) -> int:
        return sum(e.nfe for e in self.evaluations.values())


def critical_count(m: int, p0: float, level: float) -> int:
    """The least k with P(X >= k) < level, X ~ Bin(m, p0): the one-sided exact binomial test of H0: q(t) <= p0
    rejects on k of m runs exactly when k reaches it (m + 1 when no k can).

    >>> critical_count(16, 1 / 32, 0.05 / 100), critical_count(2, 0.5, 0.01)
    (5, 3)
    """
    for k in range(1, m + 1):
        if float(binom.sf(k - 1, m, p0)) < level:
            return k
    return m + 1


def significant(ev: Evaluation, p0: float, level: float) -> bool:
    """Whether ``ev`` is significantly above p0 in the test over its M runs (decided once k reaches the critical
    count; an early-stopped evaluation below it is not significant)."""
    return ev.positives >= critical_count(ev.M, p0, level)


def _last_true(pred: Callable[[int], bool], n: int) -> int:
    """Gallop (0, 1, 3, 7, ...) then bisect: the last index of the true prefix of pred over range(n), -1 if none."""
    if not pred(0):
        return -1
    lo, step = 0, 1
    while lo < n - 1:
        j = min(lo + step, n - 1)
        if not pred(j):
            hi = j
            break
        lo, step = j, step * 2
    else:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            lo = mid
        else:
            hi = mid
    return lo


def search(q_m: Callable[[float], Evaluation], grid: Sequence[float], *, method: str = "fast", p0: float,
           alpha: float = 0.05, on_point: Callable[[float], None] | None = None) -> Search:
    """t' and t'_alpha over ``grid`` with ``q_m`` (a :class:`QM`, or any function of t for testing). The fast search
    stops the runs at a time early when ``q_m`` has ``until`` (as :class:`QM` does). ``on_point(t)`` is called the
    first time each grid time is evaluated (a progress bar)."""
    if method not in ("fast", "exhaustive"):
        raise DiffauditError(f"unknown search '{method}'; choose fast or exhaustive")
    if not 0 < p0 < 1:
        raise DiffauditError(f"the chance level p_0 must be in (0, 1), got {p0}")
    if not 0 < alpha < 1:
        raise DiffauditError(f"alpha must be in (0, 1), got {alpha}")
    grid = check_grid(grid)
    out = Search(method, grid)
    level = alpha / len(grid)
    start = time.perf_counter()

    early = method == "fast" and callable(getattr(q_m, "until", None))

    def ev(i: int, stop: Callable[[int, int], bool] | None = None) -> Evaluation:
        e = q_m.until(grid[i], stop) if early else q_m(grid[i])
        if not isinstance(e, Evaluation) or not 0 <= e.positives <= e.m:
            raise DiffauditError(f"q_M({grid[i]}) returned {e!r}, not an Evaluation with 0 <= positives <= M")
        if e.m == 0:  # decided before any run (see ``decided``): nothing was evaluated
            return e
        if on_point is not None and grid[i] not in out.evaluations:
            on_point(grid[i])
        out.evaluations[grid[i]] = e
        return e

    def decided(i: int) -> bool:  # significant over all M runs, stopping as soon as that is settled
        if not early:
            return significant(ev(i), p0, level)
        m = q_m.m
        k_crit = critical_count(m, p0, level)
        return ev(i, lambda k, runs: k >= k_crit or k + (m - runs) < k_crit).positives >= k_crit

    if method == "exhaustive":
        for i in range(len(grid)):
            ev(i)
    else:
        _last_true(lambda i: ev(i, lambda k, runs: k > 0).positives > 0, len(grid))
        if not early or critical_count(q_m.m, p0, level) <= q_m.m:  # else no time can be significant
            _last_true(decided, len(grid))
    seen = sorted(out.evaluations.values(), key=lambda e: e.t)
    positive = [e.t for e in seen if e.positives > 0]
    out.t_prime = max(positive, default=0.0)
    out.t_prime_alpha = max((e.t for e in seen if significant(e, p0, level)), default=0.0)
    negative = [e.t for e in seen if e.positives == 0 and e.complete]
    out.non_monotone = bool(positive and negative and min(negative) < max(positive))
    out.wall_s = time.perf_counter() - start
    return out


def darboux_bound(s: Search, sigma: Callable[[float], float], *, upper_ci: bool = False) -> float:
    """Eq. 9 over the evaluated points up to t' (see the module docstring); ``upper_ci`` uses the Clopper-Pearson
    upper limits of q_M in place of the estimates."""
    pts = [(0.0, 1.0)]
    for e in sorted(s.evaluations.values(), key=lambda e: e.t):
        if e.t <= s.t_prime and e.m:
            pts.append((e.t, clopper_pearson(e.positives, e.m)[1] if upper_ci else e.q))
    return float(sum((sigma(b) - sigma(a)) * max(qa, qb) for (a, qa), (b, qb) in zip(pts, pts[1:], strict=False)))


def summary(s: Search, sigma: Callable[[float], float], *, p0: float, alpha: float, m: int) -> dict:
    """The ``t_prime`` section of results.json for one search; ``sigma(t)`` is the model's noise level at t
    (:meth:`QM.sigma`)."""
    q, ci, runs = [], [], []
    for t in s.grid:
        e = s.evaluations.get(t)
        q.append(None if e is None else e.q)
        ci.append(None if e is None else list(clopper_pearson(e.positives, e.m)))
        runs.append(None if e is None else e.m)
    return {
        "value": s.t_prime, "value_alpha": s.t_prime_alpha, "alpha": alpha, "chance_level": p0, "M": m,
        "grid": s.grid, "q_M": q, "q_M_ci95": ci, "runs": runs,
        "runs_note": "reverse runs made at each time: M, or fewer where the fast search had decided its predicate "
                     "(q_M is then k over those runs)",
        "bound": darboux_bound(s, sigma), "bound_ci95_upper": darboux_bound(s, sigma, upper_ci=True),
        "bound_note": "upper Darboux sum of Eq. 9: an indicator derived from t' and q_M, not a calibrated probability",
        "nfe": s.nfe, "evaluated": len(s.evaluations), "wall_s": s.wall_s, "search": s.method,
        "non_monotone": s.non_monotone,
    }
