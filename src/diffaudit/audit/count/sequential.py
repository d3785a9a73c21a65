"""A count that stops when it is decided: shards are drawn and counted until the question is settled.

Every generated image is a Bernoulli trial "is it x_p?" with unknown probability p. A fixed-N design draws all N
images and then tests; here the count is looked at after every shard, and sampling stops as soon as

* ``target_rate`` r is given and the interval lies wholly below r ("below_target") or wholly above it
  ("above_target"), or, without a target,
* full memorisation is rejected: the interval lies wholly below p0 = 1/N_D ("memorisation_rejected"),

or when the maximum N is reached ("max_n"). An interval computed as if N had been fixed in advance is not valid
after such a data-dependent stop (looking after every shard and stopping at the first "significant" look inflates
the error rate well above alpha; ``tests/test_sequential.py`` shows it), so the interval here is a
**confidence sequence**: it covers p at every look at once with probability at least 1 - alpha, whatever the
stopping rule.

Method: the beta-binomial mixture martingale (Robbins 1970, "Statistical methods related to the law of the
iterated logarithm", Ann. Math. Statist. 41; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49, Sec. 3 and the conjugate mixtures of
their App. A). With k positives in n images and a Beta(a, b) mixing distribution,

    M_n(p) = B(a + k, b + n - k) / B(a, b) / (p^k (1 - p)^(n - k))

is, for the true p, a nonnegative martingale with M_0 = 1, so by Ville's inequality P(exists n: M_n(p) >= 1/alpha)
<= alpha. The confidence sequence is C_n = {p : M_n(p) < 1/alpha}, an interval around k/n (M_n is log-convex in p);
the anytime-valid p-value of H0: p = p0 is min(1, 1 / max over the looks of M_m(p0)). a = b = 1/2 (Jeffreys)
keeps the interval tight for the small rates an audit meets. The price of validity under optional stopping is
width: at a fixed n, C_n is wider than the Clopper–Pearson interval, which is why the fixed-N test stays the
default for reproducing the paper.

Images are drawn in index order, so the stopped sample is images 0 .. n-1, each still a function of (seed, i):
a resumed run replays the shards already drawn and makes the same looks and the same decision.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaln
from tqdm.auto import tqdm

from ...adversary.detectors import Detector, call_detector
from ...config import SampleConfig
from ...diffusion.generative import Generative
from ...diffusion.precision import compiled
from ...errors import DiffauditError
from ...generate import claim_folder, generate_shards, read_shard, run_conditions, shard_path
from ...images import save_grid
from ...io import read_json, write_json

#: the Beta(a, b) mixing distribution of the martingale (Jeffreys)
PRIOR = (0.5, 0.5)
METHOD = ("beta-binomial mixture confidence sequence (Robbins 1970; Howard et al. 2021), Beta(1/2, 1/2) mixture, "
          "anytime-valid")
REASONS = ("memorisation_rejected", "below_target", "above_target", "max_n")


def _check(k: int, n: int, alpha: float) -> None:
    if n < 1 or not 0 <= k <= n:
        raise DiffauditError(f"need 0 <= positives <= n and n >= 1, got {k} of {n}")
    if not 0 < alpha < 1:
        raise DiffauditError(f"alpha must be in (0, 1), got {alpha}")


def log_martingale(p: float | np.ndarray, k: int | np.ndarray, n: int | np.ndarray,
                   prior: tuple[float, float] = PRIOR) -> np.ndarray:
    """log M_n(p) (module docstring); vectorised over p, k and n."""
    a, b = prior
    p, k, n = np.asarray(p, float), np.asarray(k, float), np.asarray(n, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = np.where(k > 0, k * np.log(p), 0.0) + np.where(n - k > 0, (n - k) * np.log1p(-p), 0.0)
    return betaln(a + k, b + n - k) - betaln(a, b) - loglik


def confidence_sequence(k: int, n: int, alpha: float = 0.05, prior: tuple[float, float] = PRIOR) -> tuple[float, float]:
    """The confidence sequence's interval after k positives in n images: {p : M_n(p) < 1/alpha}.

    >>> lo, hi = confidence_sequence(0, 1000)
    >>> lo, round(hi, 4)      # wider than the fixed-N Clopper-Pearson upper limit 0.0037: the price of looking often
    (0.0, 0.007)
    """
    _check(k, n, alpha)
    level = math.log(1 / alpha)
    f = lambda p: float(log_martingale(p, k, n, prior)) - level  # noqa: E731
    mid = min(max(k / n, 1e-300), 1 - 1e-16)
    lo = 0.0 if k == 0 or f(1e-300) < 0 else brentq(f, 1e-300, mid, xtol=1e-15, rtol=1e-12)
    hi = 1.0 if k == n or f(1 - 1e-16) < 0 else brentq(f, mid, 1 - 1e-16, xtol=1e-15, rtol=1e-12)
    return float(lo), float(hi)


def anytime_p_value(ks: list[int], ns: list[int], p0: float, prior: tuple[float, float] = PRIOR) -> float:
    """The anytime-valid p-value of H0: p = p0 after looks with ks positives of ns images: 1 / max M_m(p0)."""
    if not 0 < p0 < 1:
        raise DiffauditError(f"p0 must be in (0, 1), got {p0}")
    if not ks:
        return 1.0
    return float(min(1.0, math.exp(-float(np.max(log_martingale(p0, np.array(ks), np.array(ns), prior))))))


def decide(lo: float, hi: float, *, p0: float, target: float | None) -> str | None:
    """Why the count may stop now (one of :data:`REASONS` but max_n), or None to draw another shard."""
    if target is not None:
        if hi < target:
            return "below_target"
        if lo > target:
            return "above_target"
        return None
    return "memorisation_rejected" if hi < p0 else None


def looks_of(positives: list[int], n: int, shard_size: int) -> tuple[list[int], list[int]]:
    """(k, n) at each look (after every shard of ``shard_size`` images, and at n) from the indices of the positives."""
    ns = sorted({*range(shard_size, n, shard_size), n})
    pos = np.sort(np.asarray(positives, dtype=np.int64))
    return [int(np.searchsorted(pos, m)) for m in ns], ns


def sequential_sample(out: str | Path, model: Generative, cfg: SampleConfig, detectors: dict[str, Detector], *,
                      n_train: int, target_rate: float | None = None, alpha: float = 0.05, detector: str = "",
                      device="cpu", progress: bool = True, log: Callable[[str], None] = print,
                      conditions=None) -> dict:
    """Draw ``cfg.shard_size`` images at a time into ``out`` (as :func:`~diffaudit.generate.generate_shards`), count
    them with ``detectors`` (q = all positive) and stop when :func:`decide` says so or at ``cfg.n``; write and return
    ``<out>/sequential.json``. Shards already in ``out`` are replayed, not redrawn."""
    if target_rate is not None and not 0 < target_rate < 1:
        raise DiffauditError(f"--target-rate must be in (0, 1), got {target_rate}")
    if not 0 < alpha < 1:
        raise DiffauditError(f"alpha must be in (0, 1), got {alpha}")
    out, p0, size = Path(out), 1.0 / n_train, cfg.shard_size
    # shards already there are replayed only if this model and config made them
    claim_folder(out, model, cfg, conditions=conditions)
    model = compiled(model, cfg.compile)  # once, not once per shard
    k = n = 0
    looks: list[dict] = []
    reason = None
    bar = tqdm(total=cfg.n, disable=not progress, desc="sequential count", unit="img", dynamic_ncols=True)
    for s in range(-(-cfg.n // size)):
        expected = np.arange(s * size, min((s + 1) * size, cfg.n))
        path = shard_path(out, s)
        fresh = True
        if path.exists():
            fresh = not np.array_equal(read_shard(path)["indices"], expected)
        if fresh:  # draws shard s only: the ones before it are there
            generate_shards(out, model, dataclasses.replace(cfg, n=int(expected[-1]) + 1), device=device, progress=False,
                            conditions=conditions)
        images = read_shard(path)["images"]
        flags = np.logical_and.reduce([call_detector(d, images, name) for name, d in detectors.items()])
        k, n = k + int(flags.sum()), n + len(images)
        lo, hi = confidence_sequence(k, n, alpha)
        looks.append({"n": n, "q": k, "lo": lo, "hi": hi})
        bar.update(len(images))
        bar.set_postfix_str(f"|q| {k}/{n}, interval [{lo:.3g}, {hi:.3g}]")
        reason = decide(lo, hi, p0=p0, target=target_rate)
        if reason is not None:
            break
    bar.close()
    reason = reason or "max_n"
    save_grid(out / "grid.png", read_shard(shard_path(out, 0))["images"][:64])
    record = {"method": METHOD, "alpha": alpha, "target_rate": target_rate, "p_null": p0, "max_n": cfg.n,
              "shard_size": size, "detector": detector, "n_samples": n, "q": k, "reason": reason,
              "saved": cfg.n - n, "saved_share": (cfg.n - n) / cfg.n, "looks": looks}
    write_json(out / "sequential.json", record)
    log(f"sequential count stopped at {n} of at most {cfg.n} images ({reason}): |q| = {k}, "
        f"{100 * (1 - alpha):g}% confidence sequence [{looks[-1]['lo']:.4g}, {looks[-1]['hi']:.4g}]")
    return record


def sequential_run(run: str | Path, name: str, cfg: SampleConfig, *, target_rate: float | None = None,
                   alpha: float = 0.05, detector: str = "classifiers", data_root=None, device: str = "auto",
                   progress: bool = True, log: Callable[[str], None] = print, net: Generative | None = None) -> dict:
    """:func:`sequential_sample` for the model ``run`` audits (or ``net``), into ``<run>/samples/<name>/``, with the
    run's detectors. One process only: the looks are taken in index order."""
    from ...adversary.stage import AuditData, make_detectors
    from ...data.canaries import memorisation_n
    from ...data.prepare import load_manifest
    from ...device import resolve_device
    from ...io import check_name
    from ...parallel import launched_world
    from ..tprime.stage import load_run_model

    check_name(name)  # (the audit's count stage replaces results.json's count; 'sample --sequential' checks the folder)
    if launched_world() > 1:
        raise DiffauditError("the sequential count looks at the shards in order and runs in one process; launch it "
                             "without accelerate/torchrun, or sample a fixed N in parallel")
    if cfg.condition == "x_p":
        raise DiffauditError("the sequential count tests against 1/N_D, which samples drawn with x_p's own conditions "
                             "do not follow; draw them with a fixed --n and count them ('diffaudit count')")
    run = Path(run)
    manifest = load_manifest(run)
    if net is None:
        net = load_run_model(run, manifest, data_root=data_root, device=device)
    detectors = make_detectors(run, AuditData(manifest, data_root), detector, device=device)
    _say_detectable(run, cfg.n, memorisation_n(manifest), alpha, target_rate, log)
    return sequential_sample(run / "samples" / name, net, cfg, detectors, n_train=memorisation_n(manifest),
                             target_rate=target_rate, alpha=alpha, detector=detector, device=resolve_device(device),
                             progress=progress, log=log,
                             conditions=run_conditions(manifest, net, cfg.condition, data_root))


def _say_detectable(run: Path, max_n: int, n_train: int, alpha: float, target_rate: float | None,
                    log: Callable[[str], None]) -> None:
    """Before drawing: the smallest rate this count can show at its largest N against the held-out real images
    (the verdict's figure; a control model's samples, counted later, can only lower it), and a warning when
    --target-rate is below it."""
    from .verdict import detectable_for, negatives, sensitivity  # the verdict reads this module's intervals

    path = run / "classifiers" / "metrics.json"
    metrics = read_json(path) if path.exists() else {}
    neg = negatives({}, metrics)
    counts = {"q": 0, "n": max_n, "n_train": n_train, "sequential": {"alpha": alpha}}
    rate = detectable_for(counts, neg, sensitivity(metrics))
    if rate is None or neg is None:
        return
    log(f"at its largest N = {max_n}, this count can show reproduction rates above {rate:.4g} (80% power, against "
        f"{neg['text']})")
    if target_rate is not None and target_rate < rate:
        log(f"warning: --target-rate {target_rate:g} is below that: a stop 'below target' bounds the rate, but a rate "
            f"between them could not have been told from false alarms; count a control model's samples for more "
            f"negatives")


def read_sequential(folder: Path) -> dict | None:
    """``<folder>/sequential.json`` (None for a fixed-N folder), refused in one line unless it is as
    :func:`sequential_sample` writes it: where the count stopped, of how many at most, alpha, the shard size and a
    record per look."""
    path = Path(folder) / "sequential.json"
    if not path.exists():
        return None
    seq = read_json(path, expect=dict, fix="delete it and run the sequential count again ('diffaudit sample "
                                           "--sequential' with the same options)")

    def whole(key: str, least: int) -> bool:
        v = seq.get(key)
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    alpha = seq.get("alpha")
    problem = next((what for ok, what in (
        (whole("n_samples", 1) and whole("max_n", 1) and whole("shard_size", 1),
         "n_samples, max_n and shard_size must be whole numbers >= 1"),
        (whole("n_samples", 1) and whole("max_n", 1) and seq["n_samples"] <= seq["max_n"],
         "n_samples must not exceed max_n"),
        (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha < 1, "alpha must be in (0, 1)"),
        (isinstance(seq.get("looks"), list), "looks must be a list"),
        (isinstance(seq.get("reason"), str), "reason must be a string"),
    ) if not ok), None)
    if problem is not None:
        raise DiffauditError(f"{path} is not a sequential count's record ({problem}): it was edited or damaged; delete "
                             "it and run the sequential count again ('diffaudit sample --sequential' with the same "
                             "options)")
    return seq


def check_sequential_folder(run: Path, name: str) -> None:
    """Refuse a sequential count into the samples folder that results.json counted as a fixed-N sample: its
    sequential.json would contradict that count."""
    path = Path(run) / "results.json"
    if not path.is_file():
        return
    rep = read_json(path, expect=dict).get("reproduction")
    if (isinstance(rep, dict) and rep.get("samples") == f"samples/{name}" and rep.get("design") != "sequential"
            and read_sequential(Path(run) / "samples" / name) is None):
        raise DiffauditError(f"{Path(run) / 'samples' / name} holds the fixed-N samples results.json counted; a "
                             "sequential count there would contradict that count: choose another --name")


def sequential_fields(seq: dict, q_indices: list[int], n: int, n_train: int, fixed: dict) -> dict:
    """The reproduction section's interval, upper limit and p-value replaced by their anytime-valid versions for a
    count of the ``n`` images a sequential run stopped at (any detector: the confidence sequence holds at any
    stopping time). ``fixed`` holds the fixed-N values, kept under ``fixed_n`` for reference."""
    alpha = float(seq["alpha"])
    k = len(q_indices)
    lo, hi = confidence_sequence(k, n, alpha)
    ks, ns = looks_of(q_indices, n, int(seq["shard_size"]))
    return {
        "design": "sequential",
        "rate_ci95": [lo, hi],
        "rate_upper95": hi,
        "p_value": anytime_p_value(ks, ns, 1.0 / n_train),
        "fixed_n": {**fixed, "note": "exact fixed-N values, not valid after a data-dependent stop; for reference"},
        "sequential": {k_: v for k_, v in seq.items() if k_ != "looks"} | {"looks": len(seq["looks"])},
    }
